//! `FakeExecutor`: a test and benchmark double that reports every stage without running git or
//! npm, so the scheduler, the protocol and the event log can be measured on their own.
//! The real executor, [`crate::Pipeline`], is always the default.

use std::time::Duration;

use async_trait::async_trait;
use cloudbuild_proto::event::OutputStream;
use cloudbuild_proto::task::Stage;
use cloudbuild_proto::worker::Outcome;

use crate::executor::{Executor, TaskContext};

/// Reports each stage; optionally sleeps in `build` and fails a chosen stage.
#[derive(Debug, Clone, Default)]
pub struct FakeExecutor {
    /// Time spent "building" (cancellable).
    pub build_time: Duration,
    /// Stage to fail, if any.
    pub fail_at: Option<Stage>,
}

#[async_trait]
impl Executor for FakeExecutor {
    async fn run(&self, mut ctx: TaskContext) -> Outcome {
        let r = &ctx.reporter;
        for stage in Stage::ALL {
            if stage == Stage::Check {
                continue;
            }
            r.started(stage, format!("fake {stage}"));
            if self.fail_at == Some(stage) {
                return Outcome::Failed { stage, reason: "fake failure".into() };
            }
            if stage == Stage::Build {
                r.output(OutputStream::Stdout, "fake build output\n".into());
                tokio::select! {
                    _ = tokio::time::sleep(self.build_time) => {}
                    _ = ctx.cancel.cancelled() => return Outcome::Cancelled { stage: Some(stage) },
                }
            }
            r.succeeded(stage, format!("fake {stage} done"));
        }
        let a = &ctx.assignment;
        Outcome::Succeeded { url: format!("fake://{}/{}", a.name, a.version) }
    }
}
