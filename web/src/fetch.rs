//! Downloads through the browser's Cache API, so a reload does not download again.

use js_sys::Uint8Array;
use wasm_bindgen::{JsCast, JsValue};
use wasm_bindgen_futures::JsFuture;
use web_sys::{Cache, Response};

const CACHE_NAME: &str = "rfgen-models-v1";

fn describe(e: JsValue) -> String {
    e.as_string()
        .or_else(|| e.dyn_ref::<js_sys::Error>().map(|e| String::from(e.message())))
        .unwrap_or_else(|| format!("{e:?}"))
}

pub async fn open_cache() -> Option<Cache> {
    let caches = web_sys::window()?.caches().ok()?;
    JsFuture::from(caches.open(CACHE_NAME)).await.ok()?.dyn_into::<Cache>().ok()
}

/// The bytes at `url` (from the cache when present); `Ok(None)` on HTTP 404 when `optional`.
pub async fn fetch_bytes(url: &str, cache: Option<&Cache>, optional: bool) -> Result<Option<Vec<u8>>, String> {
    let window = web_sys::window().ok_or("no window")?;
    let mut response: Option<Response> = None;
    if let Some(cache) = cache {
        if let Ok(hit) = JsFuture::from(cache.match_with_str(url)).await {
            response = hit.dyn_into::<Response>().ok();
        }
    }
    let from_cache = response.is_some();
    let response = match response {
        Some(r) => r,
        None => JsFuture::from(window.fetch_with_str(url))
            .await
            .map_err(|e| format!("{url} is unreachable: {}", describe(e)))?
            .dyn_into::<Response>()
            .map_err(|_| format!("{url}: not a response"))?,
    };
    if !response.ok() {
        if optional && response.status() == 404 {
            return Ok(None);
        }
        return Err(format!("{url}: HTTP {} {}", response.status(), response.status_text()));
    }
    if let (Some(cache), false) = (cache, from_cache) {
        if let Ok(copy) = response.clone() {
            let _ = JsFuture::from(cache.put_with_str(url, &copy)).await;
        }
    }
    let buffer = JsFuture::from(response.array_buffer().map_err(describe)?).await.map_err(describe)?;
    Ok(Some(Uint8Array::new(&buffer).to_vec()))
}

/// Forgets cached copies (after a failed verification, so the next load downloads again).
pub async fn evict(cache: Option<&Cache>, urls: &[String]) {
    if let Some(cache) = cache {
        for url in urls {
            let _ = JsFuture::from(cache.delete_with_str(url)).await;
        }
    }
}

/// `base` resolved against the page, then `name` relative to it.
pub fn join(base: &str, name: &str) -> String {
    match base.rfind('/') {
        Some(i) => format!("{}/{name}", &base[..i]),
        None => name.to_string(),
    }
}
