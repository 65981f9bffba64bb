use std::fmt;

/// Every failure rfgen reports to a user: one line that names the problem.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{0}")]
    Io(String),
    #[error("config {path}: {msg}")]
    Config { path: String, msg: String },
    #[error("checkpoint {source_name}: {msg}")]
    Checkpoint { source_name: String, msg: String },
    #[error("weights do not match the model: {0}")]
    Weights(WeightProblems),
    #[error("invalid input: {0}")]
    Input(String),
    #[error("tokenizer: {0}")]
    Tokenizer(String),
    #[error("backend: {0}")]
    Backend(String),
    #[error("gguf: {0}")]
    Gguf(String),
}

pub type Result<T> = std::result::Result<T, Error>;

impl Error {
    pub fn input(msg: impl Into<String>) -> Self {
        Error::Input(msg.into())
    }
    pub fn checkpoint(source: impl Into<String>, msg: impl Into<String>) -> Self {
        Error::Checkpoint { source_name: source.into(), msg: msg.into() }
    }
    pub fn config(path: impl Into<String>, msg: impl fmt::Display) -> Self {
        Error::Config { path: path.into(), msg: msg.to_string() }
    }
}

/// Problems found while building a model from a checkpoint, each naming its tensor.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct WeightProblems {
    pub missing: Vec<String>,
    pub unexpected: Vec<String>,
    /// (name, expected shape, stored shape)
    pub misshapen: Vec<(String, Vec<usize>, Vec<usize>)>,
    pub non_finite: Vec<String>,
    pub bad_dtype: Vec<(String, String)>,
}

impl WeightProblems {
    pub fn is_empty(&self) -> bool {
        self.missing.is_empty()
            && self.unexpected.is_empty()
            && self.misshapen.is_empty()
            && self.non_finite.is_empty()
            && self.bad_dtype.is_empty()
    }
}

fn list(f: &mut fmt::Formatter<'_>, what: &str, names: &[String], first: &mut bool) -> fmt::Result {
    if names.is_empty() {
        return Ok(());
    }
    const SHOWN: usize = 8;
    if !*first {
        write!(f, "; ")?;
    }
    *first = false;
    write!(f, "{what} ({}): {}", names.len(), names.iter().take(SHOWN).cloned().collect::<Vec<_>>().join(", "))?;
    if names.len() > SHOWN {
        write!(f, ", ... {} more", names.len() - SHOWN)?;
    }
    Ok(())
}

impl fmt::Display for WeightProblems {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut first = true;
        list(f, "missing tensors", &self.missing, &mut first)?;
        let shapes: Vec<String> = self
            .misshapen
            .iter()
            .map(|(n, want, got)| format!("{n} expected {want:?} but stored {got:?}"))
            .collect();
        list(f, "wrong shape", &shapes, &mut first)?;
        list(f, "non-finite values (NaN/Inf)", &self.non_finite, &mut first)?;
        let dtypes: Vec<String> = self.bad_dtype.iter().map(|(n, d)| format!("{n} ({d})")).collect();
        list(f, "unsupported dtype", &dtypes, &mut first)?;
        list(f, "unexpected tensors", &self.unexpected, &mut first)
    }
}
