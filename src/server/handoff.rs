//! Hand-off of accepted connections to session threads that finished a session and wait for another.

use std::collections::VecDeque;
use std::net::{IpAddr, TcpStream};
use std::sync::{Condvar, Mutex};
use std::time::{Duration, Instant};

use super::Slot;

/// How long a session thread waits for its next session before it ends.
pub const THREAD_LINGER: Duration = Duration::from_secs(10);

/// An accepted connection on its way to a session thread.
pub struct Job {
    /// First, so that a job dropped unserved frees its slot (and the server's record of the
    /// socket) before the socket is closed: fields drop in the order they are declared.
    pub slot: Slot,
    pub stream: TcpStream,
    pub ip: IpAddr,
    pub mode: crate::config::Mode,
}

/// Connections handed to session threads that are waiting for one.
#[derive(Default)]
pub struct Handoff {
    state: Mutex<HandoffState>,
    ready: Condvar,
}

#[derive(Default)]
struct HandoffState {
    jobs: VecDeque<Job>,
    idle: usize,
}

impl Handoff {
    /// Gives the job to a waiting thread, or back when none is free.
    pub fn offer(&self, job: Job) -> Option<Job> {
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        if state.idle <= state.jobs.len() {
            return Some(job);
        }
        state.jobs.push_back(job);
        self.ready.notify_one();
        None
    }

    /// Waits up to `linger` for a job.
    pub fn take(&self, linger: Duration) -> Option<Job> {
        let deadline = Instant::now() + linger;
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        state.idle += 1;
        loop {
            if let Some(job) = state.jobs.pop_front() {
                state.idle -= 1;
                return Some(job);
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                state.idle -= 1;
                return None;
            }
            state = self.ready.wait_timeout(state, left).unwrap_or_else(|e| e.into_inner()).0;
        }
    }
}
