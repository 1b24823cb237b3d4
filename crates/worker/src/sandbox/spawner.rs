//! A task's spawner: a thread of the worker that sits in the task's cgroup and starts the
//! task's commands, so that they begin life in the cgroup instead of moving into it.
//!
//! Why: moving a process into a cgroup waits for an RCU grace period when the machine has
//! been quiet (the kernel's `cgroup_threadgroup_rwsem`), 7 to 10 ms on this machine kind, paid
//! by every command of a build. A child starts in the cgroup of the thread that forked it, and
//! cgroup v1 places threads one by one (Documentation/admin-guide/cgroup-v1/cgroups.rst,
//! "tasks"), so one thread moved once per task is enough. cgroup v2 keeps a process's threads
//! together; there each command moves itself in (see the sandbox's prelude).

use std::path::PathBuf;
use std::sync::mpsc;

use tokio::process::{Child, Command};
use tokio::sync::oneshot;

type Job = (Command, oneshot::Sender<std::io::Result<Child>>);

/// Starts commands from a thread in a cgroup. Dropped, the thread ends.
#[derive(Debug)]
pub(crate) struct Spawner {
    jobs: mpsc::Sender<Job>,
}

impl Spawner {
    /// Starts the thread, which moves itself into the cgroup v1 hierarchies whose `tasks`
    /// files are given (not waited for: the move takes milliseconds, and the task has other
    /// things to do meanwhile). Errors when there is no Tokio runtime to spawn on. If the move
    /// fails, every spawn fails with the reason: a command never starts outside its cgroup.
    pub(crate) fn start(tasks_files: Vec<PathBuf>) -> std::io::Result<Spawner> {
        let runtime = tokio::runtime::Handle::try_current().map_err(std::io::Error::other)?;
        let (jobs, queue) = mpsc::channel::<Job>();
        std::thread::Builder::new().name("task-spawner".into()).spawn(move || {
            let tid = nix::unistd::gettid().to_string();
            let moved = tasks_files.iter().try_for_each(|f| std::fs::write(f, &tid)).map_err(|e| e.to_string());
            // Spawning registers the child with the runtime's process driver.
            let _runtime = runtime.enter();
            while let Ok((mut cmd, reply)) = queue.recv() {
                let spawned = match &moved {
                    Ok(()) => cmd.spawn(),
                    Err(e) => Err(std::io::Error::other(format!("cannot move into the task's cgroup: {e}"))),
                };
                // The child's ends of any pipes close here, before the caller reads them.
                drop(cmd);
                let _ = reply.send(spawned);
            }
        })?;
        Ok(Spawner { jobs })
    }

    /// Spawns `cmd` from the thread in the cgroup.
    pub(crate) async fn spawn(&self, cmd: Command) -> std::io::Result<Child> {
        let (reply, spawned) = oneshot::channel();
        self.jobs.send((cmd, reply)).map_err(|_| std::io::Error::other("the task's spawner has ended"))?;
        spawned.await.map_err(|_| std::io::Error::other("the task's spawner has ended"))?
    }
}
