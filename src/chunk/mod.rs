//! Chunks: the volume cut into fixed-size pieces, each compressed into an independent zstd
//! frame ([`frame`]), by a pipeline of one reader and N compression threads that hands frames
//! on in chunk order ([`pipeline`]).

pub mod frame;
pub mod ordered;
pub mod pipeline;
pub mod source;

pub use frame::{SeekEntry, ZeroFrame};
pub use pipeline::{FrameBytes, FrameSink, PipelineConfig, PipelineStats, Reuse, ReusedFrame, run_pipeline};
pub use source::ChunkSource;
