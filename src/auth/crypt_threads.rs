//! Low-priority threads for password hashing (bcrypt, sha256_crypt).
//!
//! A wrong-password flood costs a quarter of a second of CPU per attempt at bcrypt cost
//! 12. Run on the runtime's blocking pool, that work competes as an equal with the
//! threads proxying requests, and on a small machine it shows up in every request's
//! latency. Here it runs on its own threads at a lower scheduling priority (nice 10 on
//! Linux): logins still finish, but proxied requests go first when the CPU is short.

use std::sync::mpsc::{Receiver, Sender, channel};
use std::sync::{Arc, Mutex};

/// How much lower than the rest of the process the hashing threads run (Linux nice).
pub const NICENESS: i32 = 10;

/// Thread name, visible in `top -H` and `/proc/<pid>/task/*/comm`.
pub const THREAD_NAME: &str = "flexgate-crypt";

type Job = Box<dyn FnOnce() + Send>;

/// A fixed set of hashing threads fed through a queue; they exit when the last handle
/// is dropped.
#[derive(Clone)]
pub struct CryptThreads {
    queue: Sender<Job>,
}

impl std::fmt::Debug for CryptThreads {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("CryptThreads")
    }
}

/// The hashing threads are gone (the process is shutting down).
#[derive(Debug, thiserror::Error)]
#[error("the password hashing threads have stopped")]
pub struct Stopped;

impl CryptThreads {
    /// Start `threads` hashing threads (at least one).
    pub fn start(threads: usize) -> std::io::Result<CryptThreads> {
        let (queue, jobs) = channel::<Job>();
        let jobs = Arc::new(Mutex::new(jobs));
        for _ in 0..threads.max(1) {
            let jobs = Arc::clone(&jobs);
            std::thread::Builder::new()
                .name(THREAD_NAME.into())
                .spawn(move || run(&jobs))?;
        }
        Ok(CryptThreads { queue })
    }

    /// Run `work` on a hashing thread and wait for its result without blocking the
    /// async runtime.
    pub async fn run<T: Send + 'static>(
        &self,
        work: impl FnOnce() -> T + Send + 'static,
    ) -> Result<T, Stopped> {
        let (answer, result) = tokio::sync::oneshot::channel();
        self.queue
            .send(Box::new(move || {
                // The caller may have gone away (its request was cancelled): fine.
                let _ = answer.send(work());
            }))
            .map_err(|_| Stopped)?;
        result.await.map_err(|_| Stopped)
    }
}

fn run(jobs: &Mutex<Receiver<Job>>) {
    lower_priority();
    loop {
        // The lock is held only while waiting for the next job, never while working.
        let job = match jobs.lock() {
            Ok(queue) => queue.recv(),
            Err(poisoned) => poisoned.into_inner().recv(),
        };
        match job {
            Ok(job) => job(),
            Err(_) => return,
        }
    }
}

/// Lower this thread's priority. On Linux the nice value is per thread, so only the
/// hashing threads are affected. Best effort: a platform that refuses keeps hashing at
/// normal priority.
fn lower_priority() {
    #[cfg(target_os = "linux")]
    if let Err(e) = rustix::process::setpriority_process(None, NICENESS) {
        tracing::debug!(error = %e, "could not lower the hashing threads' priority");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn work_runs_on_named_low_priority_threads() {
        let threads = CryptThreads::start(2).unwrap();
        let (name, nice) = threads
            .run(|| {
                let name = std::thread::current().name().map(str::to_owned);
                // Field 19 of /proc/thread-self/stat is the nice value.
                let stat = std::fs::read_to_string("/proc/thread-self/stat").unwrap_or_default();
                let after_comm = stat.rsplit(')').next().unwrap_or_default();
                let nice: Option<i32> = after_comm
                    .split_whitespace()
                    .nth(16)
                    .and_then(|n| n.parse().ok());
                (name, nice)
            })
            .await
            .unwrap();
        assert_eq!(name.as_deref(), Some(THREAD_NAME));
        if cfg!(target_os = "linux") {
            let base: i32 = std::fs::read_to_string("/proc/self/stat")
                .unwrap()
                .rsplit(')')
                .next()
                .unwrap()
                .split_whitespace()
                .nth(16)
                .unwrap()
                .parse()
                .unwrap();
            assert_eq!(nice, Some((base + NICENESS).min(19)));
        }
    }

    #[tokio::test]
    async fn many_jobs_all_answer() {
        let threads = CryptThreads::start(2).unwrap();
        let handles: Vec<_> = (0..50)
            .map(|i| {
                let threads = threads.clone();
                tokio::spawn(async move { threads.run(move || i * 2).await.unwrap() })
            })
            .collect();
        let mut sum = 0;
        for handle in handles {
            sum += handle.await.unwrap();
        }
        assert_eq!(sum, (0..50).map(|i| i * 2).sum::<i32>());
    }
}
