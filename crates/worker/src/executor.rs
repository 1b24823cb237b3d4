//! The `Executor` trait (what runs an assignment) and `Reporter` (how it tells the server).

use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use cloudbuild_proto::event::OutputStream;
use cloudbuild_proto::mask::Masker;
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

/// Sends a task's events to the server, tagged with its attempt; with the task's secrets,
/// every message is masked first (output, notes, stage messages).
#[derive(Debug, Clone)]
pub struct Reporter {
    task: TaskAttempt,
    tx: mpsc::UnboundedSender<WorkerMessage>,
    /// Shared by the clones that stream one task's output, so a secret split across chunks
    /// is still caught.
    masker: Option<Arc<Mutex<Masker>>>,
}

fn stream_index(s: OutputStream) -> usize {
    match s {
        OutputStream::Stdout => 0,
        OutputStream::Stderr => 1,
    }
}

impl Reporter {
    /// A reporter that queues messages on the worker's outgoing channel.
    pub fn new(task: TaskAttempt, tx: mpsc::UnboundedSender<WorkerMessage>) -> Self {
        Reporter { task, tx, masker: None }
    }

    /// This reporter, masking `values` (the task's secrets) and their printed forms.
    pub fn with_secrets<'a>(mut self, values: impl IntoIterator<Item = &'a str>) -> Self {
        let masker = Masker::new(values);
        self.masker = if masker.is_empty() { None } else { Some(Arc::new(Mutex::new(masker))) };
        self
    }

    /// `text` with the task's secrets masked.
    pub fn mask(&self, text: &str) -> String {
        match &self.masker {
            Some(m) => m.lock().unwrap_or_else(|e| e.into_inner()).mask(text),
            None => text.to_owned(),
        }
    }

    /// Sends what the masker still holds back (the end of a chunk that could have begun a
    /// secret); call when a command's output ends.
    pub fn flush(&self) {
        let Some(m) = &self.masker else { return };
        for stream in [OutputStream::Stdout, OutputStream::Stderr] {
            let rest = m.lock().unwrap_or_else(|e| e.into_inner()).finish(stream_index(stream));
            if !rest.is_empty() {
                self.send(WorkerEvent::Output { stream, text: rest });
            }
        }
    }

    fn send(&self, event: WorkerEvent) {
        // The connection loop owns the receiver for the worker's whole life; a closed channel
        // means the worker is shutting down and nothing can be reported anyway.
        // Numbered by the connection loop, which keeps it until the server acknowledges it.
        let _ = self.tx.send(WorkerMessage::Event { task: self.task, seq: 0, event });
    }

    /// A stage started.
    pub fn started(&self, stage: Stage, message: impl Into<String>) {
        let message = self.mask(&message.into());
        self.send(WorkerEvent::Stage { stage, phase: StagePhase::Started, message });
    }

    /// A stage succeeded.
    pub fn succeeded(&self, stage: Stage, message: impl Into<String>) {
        let message = self.mask(&message.into());
        self.send(WorkerEvent::Stage { stage, phase: StagePhase::Succeeded, message });
    }

    /// A chunk of output.
    pub fn output(&self, stream: OutputStream, text: String) {
        let text = match &self.masker {
            Some(m) => m.lock().unwrap_or_else(|e| e.into_inner()).push(stream_index(stream), &text),
            None => text,
        };
        if !text.is_empty() {
            self.send(WorkerEvent::Output { stream, text });
        }
    }

    /// A line of the worker's own (shown in the log as stderr, prefixed).
    pub fn note(&self, text: impl AsRef<str>) {
        self.output(OutputStream::Stderr, format!("[cloudbuild] {}\n", text.as_ref()));
    }

    /// The commit the branch resolved to.
    pub fn commit(&self, sha: String) {
        self.send(WorkerEvent::Commit { sha });
    }

    /// The version the commit's `package.json` carries, for a task that takes it from there.
    pub fn version(&self, version: String) {
        self.send(WorkerEvent::Version { version });
    }

    /// What the build reused from the worker's caches, for the task's record.
    pub fn cache(&self, report: cloudbuild_proto::task::CacheReport) {
        self.send(WorkerEvent::Cache { report });
    }
}
