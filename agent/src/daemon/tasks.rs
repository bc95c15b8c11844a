//! Supervised tasks: every long-running task of the agent is started here, and its end is
//! always observed. A task that returns an error or panics is logged with its cause and
//! restarted after a backoff (counted in `netns_agent_task_restarts_total`), unless it is
//! critical, in which case the agent stops with a non-zero exit.

use std::{
    future::Future,
    pin::Pin,
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};

use tokio::task::JoinSet;

use crate::model::snapshot::TaskHealth;

/// A task body: one run, which should not end while the agent runs.
pub type TaskFuture = Pin<Box<dyn Future<Output = Result<(), TaskError>> + Send>>;

/// Why a task run ended.
#[derive(Debug, thiserror::Error)]
pub enum TaskError {
    #[error("{0}")]
    Io(#[from] std::io::Error),
    #[error("{0}")]
    Failed(String),
    /// The task ends to start over with reloaded settings: not a failure.
    #[error("reconfigured")]
    Reconfigured,
}

/// What the supervisor does when a task ends.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OnEnd {
    /// Log, wait a backoff, run it again.
    Restart,
    /// Log and stop the agent with an error.
    Fatal,
}

/// How a task is made (again, on restart).
pub struct TaskSpec {
    pub name: &'static str,
    pub on_end: OnEnd,
    pub make: Box<dyn Fn() -> TaskFuture + Send + Sync>,
}

/// A task's name and its restart counter.
type Counter = (&'static str, Arc<AtomicU64>);

/// Restart counts, shared with the snapshot.
#[derive(Clone, Default)]
pub struct Health {
    counts: Arc<std::sync::Mutex<Vec<Counter>>>,
}

impl Health {
    fn counter(&self, name: &'static str) -> Arc<AtomicU64> {
        let mut counts = self.counts.lock().unwrap_or_else(|p| p.into_inner());
        if let Some((_, c)) = counts.iter().find(|(n, _)| *n == name) {
            return Arc::clone(c);
        }
        let c = Arc::new(AtomicU64::new(0));
        counts.push((name, Arc::clone(&c)));
        c
    }

    /// Every task with its restarts so far.
    pub fn tasks(&self) -> Vec<TaskHealth> {
        let counts = self.counts.lock().unwrap_or_else(|p| p.into_inner());
        counts.iter().map(|(name, c)| TaskHealth { name, restarts: c.load(Ordering::Relaxed) }).collect()
    }
}

/// The first wait before a restart, doubled on each consecutive failure up to the cap.
const BACKOFF_START: Duration = Duration::from_millis(500);
const BACKOFF_CAP: Duration = Duration::from_secs(30);
/// A run that lasted this long resets the backoff.
const HEALTHY_RUN: Duration = Duration::from_secs(60);

/// Runs `tasks` until one critical task ends or `shutdown` completes; returns the critical
/// task's failure, if that is what ended it.
pub async fn supervise(
    tasks: Vec<TaskSpec>,
    health: Health,
    shutdown: impl Future<Output = ()>,
) -> Result<(), TaskError> {
    let mut set = JoinSet::new();
    for spec in tasks {
        let spec = Arc::new(spec);
        let restarts = health.counter(spec.name);
        set.spawn(run_one(spec, restarts));
    }
    tokio::pin!(shutdown);
    let result = tokio::select! {
        () = &mut shutdown => Ok(()),
        Some(ended) = set.join_next() => match ended {
            Ok(err) => Err(err),
            Err(join) => Err(TaskError::Failed(format!("supervisor of a task failed: {join}"))),
        },
    };
    set.shutdown().await;
    result
}

/// Runs one task forever, restarting it as its spec says; returns only when a critical
/// task ended (with why).
async fn run_one(spec: Arc<TaskSpec>, restarts: Arc<AtomicU64>) -> TaskError {
    let mut backoff = BACKOFF_START;
    loop {
        let started = tokio::time::Instant::now();
        // Each run in its own task, so a panic is caught and reported, not propagated.
        let ended = tokio::spawn((spec.make)()).await;
        if matches!(ended, Ok(Err(TaskError::Reconfigured))) {
            log::debug!("task {} restarts with the reloaded config", spec.name);
            continue;
        }
        let why = match ended {
            Ok(Ok(())) => "ended".to_owned(),
            Ok(Err(err)) => format!("failed: {err}"),
            Err(join) if join.is_panic() => format!("panicked: {}", panic_message(join.into_panic())),
            Err(join) => format!("was cancelled: {join}"),
        };
        if spec.on_end == OnEnd::Fatal {
            log::error!("task {} {why}; stopping the agent", spec.name);
            return TaskError::Failed(format!("task {} {why}", spec.name));
        }
        if started.elapsed() >= HEALTHY_RUN {
            backoff = BACKOFF_START;
        }
        log::error!("task {} {why}; restarting in {} ms", spec.name, backoff.as_millis());
        restarts.fetch_add(1, Ordering::Relaxed);
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(BACKOFF_CAP);
    }
}

fn panic_message(payload: Box<dyn std::any::Any + Send>) -> String {
    payload
        .downcast_ref::<&str>()
        .map(|s| (*s).to_owned())
        .or_else(|| payload.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "a non-text panic".to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn a_task_reconfigured_by_a_reload_starts_over_at_once_uncounted() {
        let runs = Arc::new(AtomicU64::new(0));
        let spec = {
            let runs = Arc::clone(&runs);
            TaskSpec {
                name: "tuned",
                on_end: OnEnd::Restart,
                make: Box::new(move || {
                    let n = runs.fetch_add(1, Ordering::SeqCst);
                    Box::pin(async move {
                        match n {
                            0 | 1 => Err(TaskError::Reconfigured),
                            _ => std::future::pending().await,
                        }
                    })
                }),
            }
        };
        let health = Health::default();
        let started = tokio::time::Instant::now();
        let result =
            supervise(vec![spec], health.clone(), tokio::time::sleep(Duration::from_millis(1))).await;
        assert!(result.is_ok());
        assert_eq!(runs.load(Ordering::SeqCst), 3, "started over twice, with no backoff");
        assert!(started.elapsed() < BACKOFF_START);
        assert_eq!(health.tasks(), vec![TaskHealth { name: "tuned", restarts: 0 }]);
    }

    #[tokio::test(start_paused = true)]
    async fn a_failing_task_is_restarted_and_counted() {
        let runs = Arc::new(AtomicU64::new(0));
        let spec = {
            let runs = Arc::clone(&runs);
            TaskSpec {
                name: "flaky",
                on_end: OnEnd::Restart,
                make: Box::new(move || {
                    let n = runs.fetch_add(1, Ordering::SeqCst);
                    Box::pin(async move {
                        match n {
                            0 => panic!("first run panics"),
                            1 => Err(TaskError::Failed("second run fails".into())),
                            _ => std::future::pending().await,
                        }
                    })
                }),
            }
        };
        let health = Health::default();
        let result = supervise(vec![spec], health.clone(), tokio::time::sleep(Duration::from_secs(10))).await;
        assert!(result.is_ok());
        assert_eq!(runs.load(Ordering::SeqCst), 3);
        assert_eq!(health.tasks(), vec![TaskHealth { name: "flaky", restarts: 2 }]);
    }

    #[tokio::test(start_paused = true)]
    async fn a_critical_task_that_ends_stops_the_agent() {
        let spec = TaskSpec {
            name: "http",
            on_end: OnEnd::Fatal,
            make: Box::new(|| Box::pin(async { Err(TaskError::Failed("socket closed".into())) })),
        };
        let err = supervise(vec![spec], Health::default(), std::future::pending()).await.unwrap_err();
        assert_eq!(err.to_string(), "task http failed: socket closed");
    }
}
