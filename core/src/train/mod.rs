//! Training: rectified-flow velocity loss, AdamW with global-norm clipping, EMA, stages, exact
//! resume. Generic over burn's `AutodiffBackend`; file I/O stays with the caller.

mod ema;
mod flow;
mod optim;
mod params;
mod schedule;
mod state;

pub use ema::Ema;
pub use flow::{batch_groups, batch_items, step_rng, training_rows, velocity_residual, FlowBatch, FlowTrainConfig, FlowTrainer, LrScale, Repeat, Sampling, StepStats};
pub use optim::set_trainable;
pub use optim::{AdamW, AdamWConfig};
pub use params::{export_weights, float_params, ParamFilter};
pub use schedule::{logit_normal, Decay, LrSchedule};
pub use state::{TrainState, STATE_FILES};
