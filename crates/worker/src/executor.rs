//! The `Executor` trait (what runs an assignment) and `Reporter` (how it tells the server).

use std::path::PathBuf;

use async_trait::async_trait;
use cloudbuild_proto::event::OutputStream;
use cloudbuild_proto::task::Stage;
use cloudbuild_proto::worker::{Assignment, Outcome, StagePhase, TaskAttempt, WorkerEvent, WorkerMessage};
use tokio::sync::mpsc;

use crate::cancel::CancelToken;
use crate::publish::Uploader;

/// Everything one run of a task gets.
#[derive(Debug)]
pub struct TaskContext {
    pub assignment: Assignment,
    pub reporter: Reporter,
    pub cancel: CancelToken,
    /// This worker's root for work directories; the task uses `<root>/<task>-<attempt>`.
    pub work_root: PathBuf,
    pub uploader: Uploader,
}

/// Runs assignments. The real one is [`crate::Pipeline`]; [`crate::FakeExecutor`] is a test and
/// benchmark double that skips git and npm.
#[async_trait]
pub trait Executor: Send + Sync + 'static {
    /// Runs the task to its end and says how it ended. Never panics on bad input.
    async fn run(&self, ctx: TaskContext) -> Outcome;
}

/// Sends a task's events to the server, tagged with its attempt.
#[derive(Debug, Clone)]
pub struct Reporter {
    task: TaskAttempt,
    tx: mpsc::UnboundedSender<WorkerMessage>,
}

impl Reporter {
    /// A reporter that queues messages on the worker's outgoing channel.
    pub fn new(task: TaskAttempt, tx: mpsc::UnboundedSender<WorkerMessage>) -> Self {
        Reporter { task, tx }
    }

    fn send(&self, event: WorkerEvent) {
        // The connection loop owns the receiver for the worker's whole life; a closed channel
        // means the worker is shutting down and nothing can be reported anyway.
        // Numbered by the connection loop, which keeps it until the server acknowledges it.
        let _ = self.tx.send(WorkerMessage::Event { task: self.task, seq: 0, event });
    }

    /// A stage started.
    pub fn started(&self, stage: Stage, message: impl Into<String>) {
        self.send(WorkerEvent::Stage { stage, phase: StagePhase::Started, message: message.into() });
    }

    /// A stage succeeded.
    pub fn succeeded(&self, stage: Stage, message: impl Into<String>) {
        self.send(WorkerEvent::Stage { stage, phase: StagePhase::Succeeded, message: message.into() });
    }

    /// A chunk of output.
    pub fn output(&self, stream: OutputStream, text: String) {
        self.send(WorkerEvent::Output { stream, text });
    }

    /// A line of the worker's own (shown in the log as stderr, prefixed).
    pub fn note(&self, text: impl AsRef<str>) {
        self.output(OutputStream::Stderr, format!("[cloudbuild] {}\n", text.as_ref()));
    }

    /// The commit the branch resolved to.
    pub fn commit(&self, sha: String) {
        self.send(WorkerEvent::Commit { sha });
    }
}
