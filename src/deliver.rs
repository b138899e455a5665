//! One delivery run over the spool (postern-deliver): pick what is due, deliver it, log it, bounce what failed.
//!
//! For each message: lock it, expand its recipients, ask `schedule` what is due, deliver each
//! due recipient, append every outcome to `cur/ID.log` (fsynced before the next delivery),
//! then remove the message when nothing is left, or move it to `cur/` to wait.

use std::cell::OnceCell;
use std::collections::{HashSet, VecDeque};
use std::fmt::Write as _;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Condvar, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use crate::alias::{ExpandError, LocalUsers, Target};
use crate::config::Config;
use crate::dsn::{self, Action, Diagnostic, RecipientStatus};
use crate::maildir::{Stamp, deliver_to_maildir};
use crate::outcome::{Event, attempt};
use crate::relay::{Copy, Relay};
use crate::schedule::{self, Plan, RetryPolicy};
use crate::smtp::address::{ForwardPath, Mailbox, ReversePath};
use crate::smtp::command::BodyType;
use crate::smtp::reply::EnhancedStatus;
use crate::spool::log::{Attempt, DeliveryLog, Outcome, Recipient, Where, read_log_if_any};
use crate::spool::maildrop::PickupSettings;
use crate::spool::{Envelope, OpenError, Place, QueueId, Queued, Spool, SpoolError, is_disk_full};
use crate::srs::Srs;

/// How a run is asked to behave.
#[derive(Debug, Clone, Default)]
pub struct Options {
    /// Only this message, whether due or not (`--id`).
    pub only: Option<QueueId>,
    /// Every message, whether due or not (`postern-queue flush`, or `retry --all`).
    pub force: bool,
    /// Say what would be done, change nothing.
    pub dry_run: bool,
    /// The time to act as if it were now (seconds since 1970); the clock when `None`.
    pub now: Option<u64>,
}

/// What a run did, for its last log line.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Summary {
    pub messages: usize,
    pub sent: usize,
    pub deferred: usize,
    pub bounced: usize,
    pub busy: usize,
    pub corrupt: usize,
    /// The spool filled up: the run stopped before the rest of the queue.
    pub halted: bool,
}

impl Summary {
    pub fn add(&mut self, other: &Summary) {
        self.messages += other.messages;
        self.sent += other.sent;
        self.deferred += other.deferred;
        self.bounced += other.bounced;
        self.busy += other.busy;
        self.corrupt += other.corrupt;
        self.halted |= other.halted;
    }
}

/// `sendmail -bv` (`postern-deliver --verify`): where mail to each address would go, a line
/// for each place it would land (a maildir, a command or file of an alias, the servers of a
/// remote address in the order they would be tried), or why it cannot; nothing is sent or
/// queued. Whether every address can be delivered.
pub fn verify(config: &Config, addresses: &[String]) -> Result<bool, String> {
    let users = LocalUsers::load(config).map_err(|e| e.to_string())?;
    let relay = Relay::for_routes(config);
    let mut all = true;
    for text in addresses {
        let rcpt = match crate::submit::forward_path(text, config.origin()) {
            Ok(rcpt) => rcpt,
            Err(e) => {
                println!("{text}: undeliverable: {e}");
                all = false;
                continue;
            }
        };
        let targets = match users.expand(&rcpt) {
            Ok(targets) => targets,
            Err(e) => {
                let v = crate::outcome::judge(crate::outcome::Event::Alias(&e));
                println!("{text}: {}: {} {}", cannot(v.outcome), v.status, v.text);
                all = false;
                continue;
            }
        };
        for target in targets {
            let line = match &target {
                Target::Mailbox { address, .. } if config.mailbox_transport.is_some() => {
                    let to = config.mailbox_transport.as_ref().map(ToString::to_string).unwrap_or_default();
                    format!("deliverable: <{address}> by {to}")
                }
                Target::Mailbox { owner: Some(user), .. } if config.mailbox_command.is_some() => {
                    format!("deliverable: mailbox_command (run as {user})")
                }
                Target::Mailbox { maildir, owner, .. } => match owner {
                    Some(user) => format!("deliverable: maildir {} (written as {user})", maildir.display()),
                    None => format!("deliverable: maildir {}", maildir.display()),
                },
                Target::Command { command, user, .. } => {
                    format!("deliverable: command |{command} (run as {})", user.as_ref().unwrap_or(&config.alias_user))
                }
                Target::File { path, user, .. } => {
                    format!("deliverable: file {} (as {})", path.display(), user.as_ref().unwrap_or(&config.alias_user))
                }
                Target::Remote(mailbox) => match relay.verify(mailbox) {
                    Ok(servers) => format!("deliverable: {mailbox} by {}", servers.join(", ")),
                    Err(why) => {
                        all = false;
                        format!("{}: {mailbox}: {} {}", cannot(why.outcome), why.status_text(), why.text)
                    }
                },
            };
            println!("{text}: {line}");
        }
    }
    relay.close();
    Ok(all)
}

/// How `verify` says an address cannot be delivered: for good, or for now.
fn cannot(outcome: Outcome) -> &'static str {
    if outcome == Outcome::Bounced { "undeliverable" } else { "not now" }
}

/// How far a run has come: the messages it looked at of those it listed (a second pass, for
/// the bounces it made, lists more), and what became of them.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Progress {
    pub listed: usize,
    pub looked_at: usize,
    pub summary: Summary,
}

/// How long a streaming run waits for the lock of a message just named in new/ before it
/// gives the message back to its feed for later (`Feed::later`).
const COMMIT_WAIT: Duration = Duration::from_millis(200);
/// A message given back waits this long before it is taken again...
const LATER: Duration = Duration::from_secs(1);
/// ...and is left to a whole run when its lock is still held after this long.
const GIVE_UP: Duration = Duration::from_secs(60);

/// The clock, in seconds since 1970.
fn clock() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

/// The messages a streaming run (`Runner::stream`) is given, in the order they came, each
/// once; and whether its threads are idle.
pub struct Feed {
    state: Mutex<FeedState>,
    ready: Condvar,
}

struct FeedState {
    /// In line, each with when it was first given back (`later`), if it was.
    queue: VecDeque<(QueueId, Option<Instant>)>,
    /// Every ID given so far: one that comes again (listed, then named by an event) is
    /// not taken twice.
    given: HashSet<QueueId>,
    /// Given back, locked by another: each with when to take it again, and when first given back.
    later: Vec<(QueueId, Instant, Instant)>,
    /// Threads delivering a message now.
    busy: usize,
    closed: bool,
    /// When the queue was last empty with no thread busy; `None` while there is work.
    idle_since: Option<Instant>,
}

impl Default for Feed {
    fn default() -> Feed {
        let state = FeedState {
            queue: VecDeque::new(),
            given: HashSet::new(),
            later: Vec::new(),
            busy: 0,
            closed: false,
            idle_since: Some(Instant::now()),
        };
        Feed { state: Mutex::new(state), ready: Condvar::new() }
    }
}

impl Feed {
    fn lock(&self) -> std::sync::MutexGuard<'_, FeedState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Gives one message; false when it was given before.
    pub fn give(&self, id: QueueId) -> bool {
        let mut state = self.lock();
        if state.closed || !state.given.insert(id.clone()) {
            return false;
        }
        state.queue.push_back((id, None));
        state.idle_since = None;
        drop(state);
        self.ready.notify_one();
        true
    }

    /// Whether `id` was given to this feed.
    pub fn was_given(&self, id: &QueueId) -> bool {
        self.lock().given.contains(id)
    }

    /// A message a thread could not lock goes back, to be taken again after `LATER`, until
    /// `GIVE_UP` after it first went back (another run has it, and finishes it).
    fn later(&self, id: QueueId, since: Option<Instant>) {
        let now = Instant::now();
        let since = since.unwrap_or(now);
        if since.elapsed() < GIVE_UP {
            self.lock().later.push((id, now + LATER, since));
        }
    }

    /// Puts back in line the messages given back whose wait is over; whether any are still
    /// given back (the run is not idle while one is).
    pub fn take_again(&self) -> bool {
        let now = Instant::now();
        let mut state = self.lock();
        let (again, waiting): (Vec<_>, Vec<_>) = state.later.drain(..).partition(|(_, due, _)| *due <= now);
        state.later = waiting;
        let any = !again.is_empty();
        for (id, _, since) in again {
            state.queue.push_back((id, Some(since)));
        }
        if any {
            state.idle_since = None;
            drop(state);
            self.ready.notify_all();
            return true;
        }
        !state.later.is_empty()
    }

    /// How long there has been nothing to do; zero while there is.
    pub fn idle_for(&self) -> Duration {
        self.lock().idle_since.map_or(Duration::ZERO, |t| t.elapsed())
    }

    pub fn is_closed(&self) -> bool {
        self.lock().closed
    }

    /// No more messages are taken: each thread ends after the one in hand.
    pub fn close(&self) {
        self.lock().closed = true;
        self.ready.notify_all();
    }

    /// The next message for a thread, waiting for one; `None` once the feed is closed.
    fn next(&self) -> Option<(QueueId, Option<Instant>)> {
        let mut state = self.lock();
        loop {
            if state.closed {
                return None;
            }
            if let Some(next) = state.queue.pop_front() {
                state.busy += 1;
                return Some(next);
            }
            state = self.ready.wait(state).unwrap_or_else(|e| e.into_inner());
        }
    }

    /// A thread finished the message `next` gave it.
    fn done(&self) {
        let mut state = self.lock();
        state.busy = state.busy.saturating_sub(1);
        if state.busy == 0 && state.queue.is_empty() && state.later.is_empty() {
            state.idle_since = Some(Instant::now());
        }
    }
}

/// One recipient after alias expansion, with the envelope recipient it came from and the
/// key its delivery log lines go under (made once: every step looks recipients up by it).
struct Expanded {
    original: ForwardPath,
    target: Result<Target, ExpandError>,
    key: Recipient,
}

impl Expanded {
    fn new(original: &ForwardPath, target: Result<Target, ExpandError>) -> Expanded {
        let key = match &target {
            Ok(t) => t.key(),
            Err(_) => Recipient::of_path(original),
        };
        Expanded { original: original.clone(), target, key }
    }
}

pub struct Runner<'a> {
    config: &'a Config,
    relay: Relay<'a>,
    spool: Spool,
    users: LocalUsers,
    retry: RetryPolicy,
    options: Options,
    /// When the run began: the time a whole run acts at, as one moment (seconds since 1970).
    started: u64,
    /// Set by `stream`: a streaming run lasts a while, and acts at the clock's time.
    streaming: AtomicBool,
    /// Set when the spool is found full: no further message is started.
    halted: AtomicBool,
    /// Sessions with the LMTP server (`mailbox_transport`) kept between messages, at most
    /// one a delivery thread; each next transaction begins with RSET.
    lmtp_idle: Mutex<Vec<crate::client::Session>>,
    /// Writes the copies for system users as those users (`local_users = system`); `None`
    /// when the run was not started as root, and such copies wait for one that was.
    writer: Option<crate::local::Writer>,
    /// Rewrites the sender of forwarded copies, and turns bounces to those senders back.
    srs: Option<Srs>,
    /// The maildirs' `new/` fsyncs, shared by the threads delivering into one at once.
    dir_syncs: crate::flush::DirSyncs,
    /// How far `run` has come, for a person watching (`progress`).
    progress: Mutex<Progress>,
}

impl<'a> Runner<'a> {
    pub fn new(config: &'a Config, options: Options) -> Result<Runner<'a>, String> {
        let spool = Spool::open_or_explain(&config.spool)?;
        let users = LocalUsers::load(config).map_err(|e| e.to_string())?;
        let retry = RetryPolicy::of(config);
        let relay = Relay::new(config)?;
        let srs = crate::srs::from_config(config, !options.dry_run);
        let halted = AtomicBool::new(false);
        Ok(Runner {
            config,
            relay,
            spool,
            users,
            retry,
            started: options.now.unwrap_or_else(clock),
            options,
            halted,
            writer: None,
            lmtp_idle: Mutex::new(Vec::new()),
            srs,
            dir_syncs: crate::flush::DirSyncs::default(),
            streaming: AtomicBool::new(false),
            progress: Mutex::new(Progress::default()),
        })
    }

    /// The helper that writes system users' copies as those users.
    pub fn with_writer(mut self, writer: Option<crate::local::Writer>) -> Runner<'a> {
        self.writer = writer;
        self
    }

    /// The time to act at: `Options::now`; else when a whole run began, or the clock in a
    /// streaming run.
    fn now(&self) -> u64 {
        match (self.options.now, self.streaming.load(Ordering::Relaxed)) {
            (Some(now), _) => now,
            (None, true) => clock(),
            (None, false) => self.started,
        }
    }

    /// The helper for system users' copies, back from a run that is over.
    pub fn into_writer(self) -> Option<crate::local::Writer> {
        self.writer
    }

    /// Queues what local users left in maildrop/; the IDs it queued.
    pub fn pickup(&self) -> Vec<QueueId> {
        let milters = crate::milter::local::LocalMilters::from_config(self.config);
        let settings = PickupSettings {
            hostname: &self.config.hostname,
            max_size: self.config.message_size_limit,
            now: self.now(),
            filter: milters.as_ref().map(|m| m as &dyn crate::spool::maildrop::PickupFilter),
        };
        self.spool.pickup(&settings).queued
    }

    /// Runs over the spool. Bounces made by this run are delivered by it too (a second pass).
    pub fn run(&self) -> Summary {
        let mut picked = Vec::new();
        if !self.options.dry_run {
            self.spool.repair();
            picked = self.pickup();
        }
        let mut summary = Summary::default();
        let mut made: HashSet<QueueId> = HashSet::new();
        for pass in 0..2 {
            let work: Vec<(Place, QueueId)> = self
                .spool
                .queued()
                .into_iter()
                .filter(|(_, id)| match (&self.options.only, pass) {
                    // A run for one message delivers what it picked up from maildrop/ too:
                    // no other run may be coming for it.
                    (Some(only), 0) => only == id || picked.contains(id),
                    (_, 0) => true,
                    _ => made.contains(id),
                })
                .collect();
            if work.is_empty() {
                break;
            }
            self.progress.lock().unwrap_or_else(|e| e.into_inner()).listed += work.len();
            let (done, new) = self.process_all(work);
            summary.add(&done);
            made = new.into_iter().collect();
            if made.is_empty() || self.options.dry_run || self.halted.load(Ordering::Relaxed) {
                break;
            }
        }
        if self.options.dry_run {
            self.describe_held();
        }
        self.close();
        summary.halted = self.halted.load(Ordering::Relaxed);
        summary
    }

    /// Delivers the messages of new/ that `feed` is given as they arrive, with up to
    /// `max_delivery_threads` threads, while `watch` (run on this thread) feeds it; returns
    /// what `watch` returned, once the threads have finished the message each had in hand.
    /// Reports this run queues land in new/ too, and are fed like any message.
    pub fn stream<T>(&self, feed: &Feed, watch: impl FnOnce(&Feed) -> T) -> (T, Summary) {
        self.streaming.store(true, Ordering::Relaxed);
        let worker = || {
            let mut summary = Summary::default();
            while let Some((id, since)) = feed.next() {
                match self.open_committed(&id) {
                    Err(OpenError::Busy) => feed.later(id, since),
                    // A move cut short by a crash left a second name: a whole run's repair
                    // keeps one. Only a file with more than one name is looked for in cur/
                    // and hold/.
                    Ok(q) if q.names() > 1 && self.spool.has_second_name(&id) => {}
                    opened => drop(self.process_opened(opened, &id, &mut summary)),
                }
                if self.halted.load(Ordering::Relaxed) {
                    feed.close();
                }
                feed.done();
            }
            summary
        };
        std::thread::scope(|scope| {
            let handles: Vec<_> = (0..self.config.max_delivery_threads)
                .filter_map(|_| std::thread::Builder::new().spawn_scoped(scope, worker).ok())
                .collect();
            if handles.is_empty() {
                feed.close();
            }
            let ended = watch(feed);
            feed.close();
            let mut summary = Summary::default();
            for handle in handles {
                if let Ok(s) = handle.join() {
                    summary.add(&s);
                }
            }
            summary.halted = self.halted.load(Ordering::Relaxed);
            (ended, summary)
        })
    }

    /// Opens a message in new/ named a moment ago: its writer holds its lock until the
    /// commit is durable (the file is named before its fsync, doc/queue.md S1 -> S2), so a
    /// lock held is waited for, a little. `Busy` still: another run has it, or the disk is slow.
    fn open_committed(&self, id: &QueueId) -> Result<Queued, OpenError> {
        let started = Instant::now();
        let mut pause = Duration::from_millis(1);
        loop {
            match self.spool.open_queued(Place::New, id) {
                Err(OpenError::Busy) if started.elapsed() < COMMIT_WAIT => {
                    std::thread::sleep(pause);
                    pause = (pause * 2).min(Duration::from_millis(20));
                }
                opened => return opened,
            }
        }
    }

    /// How far `run` has come, asked from another thread while it works.
    pub fn progress(&self) -> Progress {
        self.progress.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Ends a run: QUIT on the sessions it kept.
    pub fn close(&self) {
        self.relay.close();
        for session in std::mem::take(&mut *self.lmtp_idle.lock().unwrap_or_else(|e| e.into_inner())) {
            session.quit();
        }
    }

    /// A session with the LMTP server: one kept from an earlier message that is still open,
    /// or a new one.
    fn lmtp_session(
        &self,
        to: &crate::client::LmtpAddress,
        timeouts: crate::client::Timeouts,
    ) -> Result<crate::client::Session, crate::client::ClientError> {
        loop {
            let kept = self.lmtp_idle.lock().unwrap_or_else(|e| e.into_inner()).pop();
            match kept {
                Some(session) if session.is_usable() => return Ok(session),
                Some(closed) => drop(closed), // the server closed it while it sat idle
                None => return crate::client::Session::open_lmtp(to, &self.config.hostname, timeouts),
            }
        }
    }

    /// Delivers the messages with up to `max_delivery_threads` threads at once.
    fn process_all(&self, work: Vec<(Place, QueueId)>) -> (Summary, Vec<QueueId>) {
        let threads = self.config.max_delivery_threads.min(work.len()).max(1);
        let queue = Mutex::new(work.into_iter());
        let worker = || {
            let mut summary = Summary::default();
            let mut made = Vec::new();
            while !self.halted.load(Ordering::Relaxed) {
                let next = queue.lock().unwrap_or_else(|e| e.into_inner()).next();
                let Some((place, id)) = next else { break };
                let mut one = Summary::default();
                made.extend(self.process(place, &id, &mut one));
                summary.add(&one);
                let mut progress = self.progress.lock().unwrap_or_else(|e| e.into_inner());
                progress.looked_at += 1;
                progress.summary.add(&one);
            }
            (summary, made)
        };
        std::thread::scope(|scope| {
            let handles: Vec<_> =
                (1..threads).filter_map(|_| std::thread::Builder::new().spawn_scoped(scope, worker).ok()).collect();
            let (mut summary, mut made) = worker();
            for handle in handles {
                if let Ok((s, m)) = handle.join() {
                    summary.add(&s);
                    made.extend(m);
                }
            }
            (summary, made)
        })
    }

    /// Delivers what is due of one message; returns the IDs of bounces it queued.
    fn process(&self, place: Place, id: &QueueId, summary: &mut Summary) -> Vec<QueueId> {
        self.process_opened(self.spool.open_queued(place, id), id, summary)
    }

    /// `process`, once the message is opened (or not).
    fn process_opened(&self, opened: Result<Queued, OpenError>, id: &QueueId, summary: &mut Summary) -> Vec<QueueId> {
        let queued = match opened {
            Ok(q) => q,
            Err(OpenError::Busy) => {
                summary.busy += 1;
                return Vec::new();
            }
            Err(OpenError::Corrupt(_)) => {
                summary.corrupt += 1;
                return Vec::new();
            }
            // Finished by another run (an instant delivery) since this one listed it.
            Err(OpenError::Io(e)) if e.kind() == std::io::ErrorKind::NotFound => return Vec::new(),
            Err(OpenError::Io(e)) => {
                log::warn!("{id}: cannot open: {e}");
                return Vec::new();
            }
        };
        summary.messages += 1;
        match self.deliver_message(&queued, summary) {
            Ok(made) => made,
            Err(e) => {
                log::error!("{id}: {e}; left queued");
                Vec::new()
            }
        }
    }

    /// One message: plan what is due, deliver it, record each outcome, queue the report
    /// owed, then remove the message or leave it in cur/ for its next attempt.
    fn deliver_message(&self, q: &Queued, summary: &mut Summary) -> Result<Vec<QueueId>, String> {
        let log_path = self.spool.log_path(&q.id);
        let logged = read_log_if_any(&log_path).map_err(|e| format!("{}: {e}", log_path.display()))?;
        let had_log = logged.is_some();
        let history = logged.unwrap_or_default();
        let expanded = self.expand(&q.envelope);
        let keys: Vec<Recipient> = expanded.iter().map(|e| e.key.clone()).collect();
        let plan = self.plan(q, &keys, &history);
        if self.options.dry_run {
            self.describe(q, &plan, &history);
            return Ok(Vec::new());
        }
        let idle = plan.due.is_empty() && plan.expired.is_empty() && plan.owed_report.is_empty() && !plan.warn;
        if q.place == Place::Cur && idle {
            return Ok(Vec::new()); // waiting out its back-off
        }
        if q.place == Place::New {
            // Postfix's shape for a message entering delivery, which log summarisers read.
            let nrcpt = q.envelope.rcpts.len();
            log::info!("{}: from={}, size={}, nrcpt={nrcpt} (queue active)", q.id, q.envelope.from, q.envelope.size);
        }
        // Made when the first line or reservation needs it: a message delivered at once
        // into one maildir never has one (`fixed_copy`).
        let mut log = DeliveryLog::later(&log_path);
        let mut failed = self.deliver_due(q, &expanded, &plan, &history, &mut log, summary)?;
        failed.splice(0..0, plan.owed_report.iter().cloned());
        let mut made = Vec::new();
        if !failed.is_empty() {
            // The bounces are durable before their report is queued.
            self.sync(q, &mut log)?;
            made.extend(self.report(q, &expanded, &failed, &mut log)?);
        }
        let history: Vec<Attempt> = history.iter().chain(log.appended()).cloned().collect();
        let after = schedule::plan(&self.retry, q.envelope.arrived, &keys, &history, self.now());
        if plan.warn && !after.finished {
            self.sync(q, &mut log)?;
            made.extend(self.warn(q, &expanded, &history, &mut log)?);
        }
        crate::fault::crash_point("before-remove");
        if after.finished {
            // No fsync of the last lines first: a power cut before the removal is on the disk
            // costs at worst a second copy (doc/queue.md, window 6); a kill finds them.
            self.spool.remove(q, had_log || log.made()).map_err(|e| format!("cannot remove: {e}"))?;
            log.removed();
            log::info!("{}: removed", q.id);
        } else {
            self.sync(q, &mut log)?;
            self.spool.move_to_cur(q).map_err(|e| format!("cannot move to cur/: {e}"))?;
        }
        Ok(made)
    }

    /// What is due now; with `--id` or `force`, every recipient not yet done, back-off or not.
    fn plan(&self, q: &Queued, keys: &[Recipient], history: &[Attempt]) -> Plan {
        let mut plan = schedule::plan(&self.retry, q.envelope.arrived, keys, history, self.now());
        if self.options.force || self.options.only.as_ref() == Some(&q.id) {
            // Expired recipients still bounce rather than being tried again.
            let done = |k: &Recipient| history.iter().any(|a| a.recipient == *k && a.outcome.is_final());
            let expired = |k: &Recipient| plan.expired.iter().any(|a| a.recipient == *k);
            plan.due = keys.iter().filter(|k| !done(k) && !expired(k)).cloned().collect();
        }
        plan
    }

    /// Delivers every due recipient and bounces the expired ones; returns this run's bounces.
    /// Each step first reserves the log space that records it (`DeliveryLog::reserve`).
    fn deliver_due(
        &self,
        q: &Queued,
        expanded: &[Expanded],
        plan: &Plan,
        history: &[Attempt],
        log: &mut DeliveryLog,
        summary: &mut Summary,
    ) -> Result<Vec<Attempt>, String> {
        // One copy at once into a maildir: made under its fixed name, with no log unless its
        // outcome must be kept (doc/queue.md, S3).
        let fixed = self.fixed_copy(q, expanded, plan, history);
        let mut failed = Vec::new();
        let mut remote: Vec<Copy<'_>> = Vec::new();
        let mut lmtp: Vec<&Expanded> = Vec::new();
        let rewritten = OnceCell::new();
        for (index, item) in expanded.iter().enumerate().filter(|(_, e)| plan.due.contains(&e.key)) {
            match &item.target {
                Ok(Target::Remote(m)) => {
                    remote.push(Copy { to: m, from: self.sender_for(q, item, &rewritten) });
                    continue;
                }
                Ok(Target::Mailbox { .. }) if self.config.mailbox_transport.is_some() => {
                    lmtp.push(item);
                    continue;
                }
                _ => {}
            }
            if fixed == Some(index) {
                // Its name is the message's own for this recipient, so no `copying` line; a
                // copy made is only remembered, as the message is then removed.
                let name =
                    crate::maildir::message_name(&self.config.hostname, q.envelope.arrived, q.id.as_str(), index);
                if let Some(attempt) = self.attempt(q, item, CopyName::Fixed(name), log) {
                    crate::fault::crash_point("after-local-copy");
                    if attempt.outcome == Outcome::Sent {
                        log.remember(&attempt);
                        self.account(q, item, attempt, summary, &mut failed);
                    } else {
                        self.reserve(q, log, 1)?;
                        self.record(q, log, item, attempt, summary, &mut failed)?;
                    }
                }
                continue;
            }
            // The outcome, and a `copying` line before it; what came before is durable first.
            self.sync(q, log)?;
            self.reserve(q, log, 2)?;
            if let Some(attempt) = self.attempt(q, item, CopyName::Noted(interrupted_copy(history, &item.key)), log) {
                crate::fault::crash_point("after-local-copy");
                self.record(q, log, item, attempt, summary, &mut failed)?;
            }
        }
        if let (Some(to), false) = (&self.config.mailbox_transport, lmtp.is_empty()) {
            self.sync(q, log)?;
            self.reserve(q, log, lmtp.len())?;
            let attempts = self.deliver_lmtp(q, to, &lmtp);
            crate::fault::crash_point("after-lmtp-copy");
            for (item, attempt) in lmtp.iter().zip(attempts) {
                self.record(q, log, item, attempt, summary, &mut failed)?;
            }
            self.sync(q, log)?;
        }
        if !remote.is_empty() {
            self.sync(q, log)?;
            self.reserve(q, log, remote.len())?;
            self.relay.deliver(q, &remote, self.now(), |attempts| {
                crate::fault::crash_point("after-remote-copy");
                for attempt in attempts {
                    // The relay names each outcome by its recipient's key, so the item is there.
                    if let Some(item) = expanded.iter().find(|e| e.key == attempt.recipient) {
                        self.record(q, log, item, attempt, summary, &mut failed)?;
                    }
                }
                // Durable before the next transaction starts.
                self.sync(q, log)
            })?;
        }
        for last in &plan.expired {
            let text =
                format!("gave up after {}: {}", lifetime_text(self.retry.max_queue_lifetime.as_secs()), last.text);
            let attempt = Attempt { time: self.now(), outcome: Outcome::Bounced, text, ..last.clone() };
            // Expired recipients come from this message's own keys, so the item is always there.
            if let Some(item) = expanded.iter().find(|e| e.key == attempt.recipient) {
                self.reserve(q, log, 1)?;
                self.record(q, log, item, attempt, summary, &mut failed)?;
            }
        }
        Ok(failed)
    }

    /// The mailbox copies of one message handed to the LMTP server in one transaction (RFC
    /// 2033): each recipient is decided by its own reply, RCPT's or the one after the dot for
    /// it (§4.2), as a server's would be (452 over quota: later; 552: bounced). A message to
    /// go to the Junk folder is marked `X-Spam: Yes` on top, for the server's filters.
    fn deliver_lmtp(&self, q: &Queued, to: &crate::client::LmtpAddress, items: &[&Expanded]) -> Vec<Attempt> {
        use crate::client::{ClientError, Timeouts};
        use crate::smtp::client::{RecipientResult, SmtpError};
        let place = Where::Lmtp(to.to_string());
        let all = |event: Event<'_>| -> Vec<Attempt> {
            items.iter().map(|item| attempt(self.now(), item.key.clone(), place.clone(), event)).collect()
        };
        let unexpected = ClientError::Smtp(SmtpError::Unexpected);
        let mut recipients = Vec::new();
        for item in items {
            let path = match &item.target {
                Ok(Target::Mailbox { address, .. }) => ForwardPath::parse(address.as_bytes()).ok(),
                _ => None,
            };
            let Some(path) = path else { return all(Event::Transaction(&unexpected)) };
            recipients.push(path);
        }
        let mark = junk_mark(q);
        let envelope = crate::smtp::client::Envelope {
            from: q.envelope.from.clone(),
            recipients,
            size: q.envelope.size + mark.len() as u64,
            body: q.envelope.body,
            smtputf8: q.envelope.smtputf8,
        };
        let timeouts = Timeouts {
            connect: self.config.connect_timeout,
            command: self.config.smtp_timeout,
            data_done: self.config.smtp_data_done_timeout,
        };
        let mut session = match self.lmtp_session(to, timeouts) {
            Ok(session) => session,
            Err(e) => return all(Event::Connect(&e)),
        };
        let result = session.transaction(&envelope, std::io::Read::chain(mark, q.message()));
        // A session whose transaction ended in replies is kept for the next message.
        let mut idle = self.lmtp_idle.lock().unwrap_or_else(|e| e.into_inner());
        if result.is_ok() && idle.len() < self.config.max_delivery_threads.max(1) {
            idle.push(session);
        } else {
            drop(idle);
            session.quit();
        }
        match result {
            Ok(results) if results.len() == items.len() => items
                .iter()
                .zip(results)
                .map(|(item, result)| {
                    let reply = match &result {
                        RecipientResult::Sent(r) | RecipientResult::Failed(r) => r,
                    };
                    attempt(self.now(), item.key.clone(), place.clone(), Event::Reply(reply))
                })
                .collect(),
            Ok(_) => all(Event::Transaction(&unexpected)),
            Err(e) => all(Event::Transaction(&e)),
        }
    }

    /// The place among `expanded` of the one recipient whose copy is made under the
    /// message's fixed name, with no log: a message never tried, with no history, whose only
    /// due recipient is a maildir postern writes (itself, or through the root helper), with
    /// nothing else owed. `None`: the copies are noted in the log, as for any other.
    fn fixed_copy(&self, q: &Queued, expanded: &[Expanded], plan: &Plan, history: &[Attempt]) -> Option<usize> {
        let first = q.place == Place::New && history.is_empty();
        if !first || !plan.expired.is_empty() || !plan.owed_report.is_empty() || plan.warn {
            return None;
        }
        let mut due = expanded.iter().enumerate().filter(|(_, e)| plan.due.contains(&e.key));
        let (index, item) = due.next()?;
        let written_here = match &item.target {
            Ok(Target::Mailbox { owner, .. }) => {
                self.config.mailbox_transport.is_none() && (owner.is_none() || self.config.mailbox_command.is_none())
            }
            _ => false,
        };
        (written_here && due.next().is_none()).then_some(index)
    }

    /// Makes the lines appended so far durable.
    fn sync(&self, q: &Queued, log: &mut DeliveryLog) -> Result<(), String> {
        log.sync().map_err(|e| self.spool_failure(&q.id, &self.spool.log_path(&q.id), e))
    }

    /// Room in the log for `lines` more outcomes, plus the report and warning lines that
    /// may follow them. A full spool stops the run here, before anything is delivered.
    fn reserve(&self, q: &Queued, log: &mut DeliveryLog, lines: usize) -> Result<(), String> {
        log.reserve(lines + 2).map_err(|e| self.spool_failure(&q.id, &self.spool.log_path(&q.id), e))
    }

    /// The text for a spool write that failed; a full spool also stops the run.
    fn spool_failure(&self, id: &QueueId, path: &std::path::Path, e: std::io::Error) -> String {
        if is_disk_full(&e) {
            self.halt();
            return format!(
                "the spool is full ({}: {e}); nothing more is delivered until there is space",
                path.display()
            );
        }
        format!("{id}: {}: {e}", path.display())
    }

    /// Stops the run after the messages in hand: a full spool can record no delivery.
    fn halt(&self) {
        self.halted.store(true, Ordering::Relaxed);
    }

    /// Appends one outcome to the log, logs it, and keeps a bounce for the report. The line is
    /// made durable by the next step's `DeliveryLog::sync` (the next copy, a report, the move
    /// to cur/); the last one of a finished message is not: the message is removed.
    fn record(
        &self,
        q: &Queued,
        log: &mut DeliveryLog,
        item: &Expanded,
        attempt: Attempt,
        summary: &mut Summary,
        failed: &mut Vec<Attempt>,
    ) -> Result<(), String> {
        log.append_unsynced(&attempt).map_err(|e| self.spool_failure(&q.id, &self.spool.log_path(&q.id), e))?;
        self.account(q, item, attempt, summary, failed);
        Ok(())
    }

    /// Logs an outcome and counts it; a bounce is kept for the report.
    fn account(&self, q: &Queued, item: &Expanded, attempt: Attempt, summary: &mut Summary, failed: &mut Vec<Attempt>) {
        self.log_outcome(q, item, &attempt);
        count(summary, attempt.outcome);
        if attempt.outcome == Outcome::Bounced {
            failed.push(attempt);
        }
    }

    /// Queues the report for `failed`, then records it with a `reported` line. When it cannot
    /// be queued, nothing is recorded: the bounces stay owed and a later run tries again.
    fn report(
        &self,
        q: &Queued,
        expanded: &[Expanded],
        failed: &[Attempt],
        log: &mut DeliveryLog,
    ) -> Result<Option<QueueId>, String> {
        let failures: Vec<Failure> = failed.iter().map(|a| Failure::of(a, expanded)).collect();
        let queued = match self.queue_report(q, &failures, Action::Failed) {
            Ok(queued) => queued,
            Err(e) => {
                self.report_failed(q, "report", &e);
                return Ok(None);
            }
        };
        crate::fault::crash_point("after-report-queued");
        let text = match &queued {
            Some((id, to)) => format!("report {id} to {to}"),
            None if q.envelope.quarantine => QUARANTINED.into(),
            None => "no report: the sender is <> and the postmaster cannot be told".into(),
        };
        let line = Attempt::about_message(self.now(), Outcome::Reported, None, text);
        log.append(&line).map_err(|e| self.spool_failure(&q.id, &self.spool.log_path(&q.id), e))?;
        Ok(queued.map(|(id, _)| id))
    }

    /// One error line for a report that could not be queued; the message keeps waiting.
    fn report_failed(&self, q: &Queued, what: &str, e: &SpoolError) {
        if *e == SpoolError::DiskFull {
            self.halt();
        }
        log::error!(
            "{}: cannot queue the {what} to {}: {e}; the message stays queued and a later run tries again",
            q.id,
            q.envelope.from
        );
    }

    fn expand(&self, envelope: &Envelope) -> Vec<Expanded> {
        let mut out: Vec<Expanded> = Vec::new();
        for rcpt in &envelope.rcpts {
            let expanded = match self.srs_reversed(rcpt, envelope.arrived) {
                Some(reversed) => reversed.map(|m| vec![Target::Remote(m)]),
                None => self.users.expand_with(rcpt, &|user| self.read_forward(user)),
            };
            match expanded {
                Ok(targets) => {
                    for target in targets {
                        if !out.iter().any(|e| e.target.as_ref().ok() == Some(&target)) {
                            out.push(Expanded::new(rcpt, Ok(target)));
                        }
                    }
                }
                Err(e) => out.push(Expanded::new(rcpt, Err(e))),
            }
        }
        out
    }

    /// A user's `~/.forward`, read by the helper that kept root when there is one (the run's
    /// own user may not reach the home), else here.
    fn read_forward(&self, user: &str) -> Result<crate::alias::Forward, String> {
        match &self.writer {
            Some(writer) => writer.forward(user),
            None => crate::alias::read_forward_of(user),
        }
    }

    /// The original sender an SRS recipient of ours stands for (a bounce or a reply to a copy
    /// we forwarded), its age counted at the message's arrival, when the RCPT took it;
    /// `None` for any other recipient.
    fn srs_reversed(&self, rcpt: &ForwardPath, arrived: u64) -> Option<Result<Mailbox, ExpandError>> {
        let reversed = self.srs.as_ref()?.reverse_mailbox(rcpt.mailbox()?, arrived)?;
        let unknown = |why: String| ExpandError::UnknownUser(format!("{rcpt} ({why})"));
        Some(match reversed {
            Ok((local, domain)) => Mailbox::from_text(&local, &domain)
                .map_err(|e| unknown(format!("it stands for an unusable address: {e}"))),
            Err(why) => Err(unknown(why.to_string())),
        })
    }

    /// The sender a remote copy goes with: `rewritten` (the message's SRS sender, made at
    /// most once per message) for a copy an alias forwards (its recipient is not the one the
    /// message came for); the message's own sender otherwise, or when there is no SRS sender.
    fn sender_for(
        &self,
        q: &Queued,
        item: &Expanded,
        rewritten: &OnceCell<Option<Result<ReversePath, String>>>,
    ) -> ReversePath {
        let from = &q.envelope.from;
        if Recipient::of_path(&item.original) == item.key {
            return from.clone();
        }
        match rewritten.get_or_init(|| self.srs_sender(q)) {
            Some(Ok(rewritten)) => {
                log::info!("{}: from={from}, forwarded to {} as from={rewritten} (SRS)", q.id, item.key);
                rewritten.clone()
            }
            Some(Err(why)) => {
                log::info!("{}: sender {from} kept for {}: {why}", q.id, item.original);
                from.clone()
            }
            None => from.clone(),
        }
    }

    /// The SRS address of ours that stands for a message's sender on the copies aliases
    /// forward, so the receiver's SPF check passes for us. `None` for our users' mail, a null
    /// sender or a sender in our own domains; `Err` (why) for a rewritten address too long
    /// for a local part (RFC 5321 §4.5.3.1.1).
    fn srs_sender(&self, q: &Queued) -> Option<Result<ReversePath, String>> {
        let (Some(srs), ReversePath::Mailbox(sender)) = (&self.srs, &q.envelope.from) else { return None };
        let ours = q.envelope.submitted || q.envelope.protocol == "LOCAL" || self.users.is_local_domain(sender.host());
        let domain = sender.domain().filter(|_| !ours)?;
        let local = srs.forward(&sender.local_part_text(), &domain.to_string(), q.envelope.arrived.max(self.now()));
        let rewritten = Mailbox::from_text(&local, srs.domain());
        Some(rewritten.map(ReversePath::Mailbox).map_err(|e| format!("its SRS address would be unusable ({e})")))
    }

    /// Delivers to one local recipient; `None` when it is remote (see `relay`).
    /// One local copy. A maildir copy is named and its name noted in the log first, or has
    /// the message's fixed name and the queue file is marked first (`CopyName`); when an
    /// earlier run noted or marked a copy and was killed before its outcome, the copy is
    /// looked for under that name, and one that is there is recorded, not made again.
    fn attempt(&self, q: &Queued, item: &Expanded, copy: CopyName, log: &mut DeliveryLog) -> Option<Attempt> {
        let attempt = |place: Where, event: Event<'_>| attempt(self.now(), item.key.clone(), place, event);
        let target = match &item.target {
            Ok(t) => t,
            Err(e) => return Some(attempt(Where::Local, Event::Alias(e))),
        };
        let (address, maildir, owner) = match target {
            Target::Mailbox { address, maildir, owner, .. } => (address, maildir, owner),
            Target::Remote(_) => return None,
            Target::Command { alias, command, user } => {
                let to = format!("<{alias}>");
                let user = user.as_deref();
                return self.attempt_as(q, &to, Where::Local, attempt, |w, m| {
                    w.pipe(command, &q.envelope.from, alias, user, m)
                });
            }
            Target::File { alias, path, user } => {
                let to = format!("<{alias}>");
                let user = user.as_deref();
                return self.attempt_as(q, &to, Where::Local, attempt, |w, m| {
                    w.append(path, &q.envelope.from, alias, user, m)
                });
            }
        };
        // mailbox_command: the user's copy is the command's to write (dovecot-lda, say), marked
        // for its filters when it is for the Junk folder.
        if let (Some(user), Some(_)) = (owner, &self.config.mailbox_command) {
            let to = format!("<{address}>");
            let mark = junk_mark(q);
            return self.attempt_as(q, &to, Where::Local, attempt, |w, m| match mark.is_empty() {
                true => w.mailbox_command(user, &q.envelope.from, address, m),
                false => w.mailbox_command(user, &q.envelope.from, address, &[mark, m].concat()),
            });
        }
        // A quarantined message goes into the Junk folder where postern writes the maildir.
        let folder = q.envelope.quarantine.then_some(self.config.junk_folder.as_str());
        let interrupted = match &copy {
            CopyName::Noted(noted) => *noted,
            CopyName::Fixed(name) => q.copy_begun().then_some(name.as_str()),
        };
        if let Some(name) = interrupted {
            let found = match owner {
                Some(user) => self.writer.as_ref().and_then(|w| w.look(user, name)),
                None => crate::maildir::find_copy(maildir, folder, name),
            };
            if let Some(path) = found {
                log::info!("{}: <{address}>: the copy a killed run made is there; not copied again", q.id);
                return Some(attempt(Where::Maildir, Event::Delivered(&path.display().to_string())));
            }
        }
        if owner.is_some() && self.writer.is_none() {
            log::info!("{}: <{address}> is left for a delivery run started as root", q.id);
            return None;
        }
        let name = match copy {
            CopyName::Noted(_) => {
                let name = crate::maildir::new_name(&self.config.hostname);
                let note = Attempt {
                    time: self.now(),
                    outcome: Outcome::Copying,
                    recipient: item.key.clone(),
                    status: None,
                    relay: Where::Maildir,
                    text: name.clone(),
                    protection: None,
                };
                if let Err(e) = log.note(&note) {
                    // Only the chance to recognise this copy after a crash is lost.
                    log::warn!("{}: {}: {e}", q.id, self.spool.log_path(&q.id).display());
                }
                name
            }
            CopyName::Fixed(name) => {
                if !q.copy_begun()
                    && let Err(e) = q.mark_copy_begun()
                {
                    // Only the chance to recognise this copy after a crash is lost.
                    log::warn!("{}: cannot mark the queue file: {e}", q.id);
                }
                name
            }
        };
        crate::fault::crash_point("local-copy-noted");
        if let Some(user) = owner {
            let to = format!("<{address}>");
            return self.attempt_as(q, &to, Where::Maildir, attempt, |w, m| {
                w.write(user, &q.envelope.from, address, &name, folder.is_some(), m)
            });
        }
        let stamp = Stamp {
            return_path: &q.envelope.from,
            delivered_to: address,
            hostname: &self.config.hostname,
            follow_symlinks: self.config.follow_maildir_symlinks,
            folder,
            syncs: Some(&self.dir_syncs),
        };
        Some(match deliver_to_maildir(maildir, &stamp, &name, || Ok(q.message())) {
            Ok(path) => attempt(Where::Maildir, Event::Delivered(&path.display().to_string())),
            Err(e) => attempt(Where::Maildir, Event::Maildir(&e.into_temporary())),
        })
    }

    /// A copy another user must write (a system user's, an alias command's or file's),
    /// through the helper that kept root. Without the helper (a run not started as root)
    /// nothing is recorded: the recipient stays due, and the next run started as root (the
    /// timer, cron) delivers it without a back-off.
    fn attempt_as(
        &self,
        q: &Queued,
        who: &str,
        place: Where,
        attempt: impl Fn(Where, Event<'_>) -> Attempt,
        write: impl FnOnce(&crate::local::Writer, &[u8]) -> Result<std::path::PathBuf, crate::maildir::MaildirError>,
    ) -> Option<Attempt> {
        let Some(writer) = &self.writer else {
            log::info!("{}: {who} is left for a delivery run started as root", q.id);
            return None;
        };
        let mut message = Vec::with_capacity(usize::try_from(q.envelope.size).unwrap_or(0));
        if let Err(e) = std::io::Read::read_to_end(&mut q.message(), &mut message) {
            return Some(attempt(Where::Local, Event::Maildir(&crate::maildir::MaildirError::Io(e.to_string()))));
        }
        Some(match write(writer, &message) {
            Ok(path) => attempt(place, Event::Delivered(&path.display().to_string())),
            Err(e) => attempt(place, Event::Maildir(&e)),
        })
    }

    /// One line per outcome in the familiar shape: `ID: to=<..>, relay=.., delay=.., dsn=.., status=..`.
    fn log_outcome(&self, q: &Queued, item: &Expanded, a: &Attempt) {
        // A command or a file is logged under the address that led to it, as Postfix does.
        let mut line = match a.recipient {
            Recipient::Address(_) => format!("{}: to={}", q.id, a.recipient),
            _ => format!("{}: to={}", q.id, item.original),
        };
        if a.recipient.address().is_some() && Recipient::of_path(&item.original) != a.recipient {
            let _ = write!(line, ", orig_to={}", item.original);
        }
        let status = a.outcome.name();
        let delay = self.now().saturating_sub(q.envelope.arrived);
        let dsn = a.status_text();
        let policy = a.protection.map_or_else(String::new, |p| format!(", tls={}", p.name()));
        log::info!("{line}, relay={}, delay={delay}, dsn={dsn}, status={status} ({}){policy}", a.relay, a.text);
    }

    /// Queues one report for the failed recipients of one message (RFC 3464); `None` when
    /// none is owed.
    fn queue_report(
        &self,
        q: &Queued,
        failed: &[Failure],
        action: Action,
    ) -> Result<Option<(QueueId, ForwardPath)>, SpoolError> {
        // Its sender failed the author domain's DMARC (most likely forged) or a milter marked
        // it as spam: not to be told.
        if q.envelope.quarantine {
            log::info!("{}: {QUARANTINED}", q.id);
            return Ok(None);
        }
        let to = match (&q.envelope.from, action) {
            (ReversePath::Mailbox(m), _) => ForwardPath::Mailbox(m.clone()),
            // §6.1: no report to a null sender. A failed report itself goes to the postmaster,
            // unless the postmaster is who it failed for.
            (ReversePath::Null, Action::Failed) if !failed.iter().any(Failure::is_postmaster) => {
                ForwardPath::Postmaster
            }
            (ReversePath::Null, _) => {
                log::info!("{}: no report: the sender is <> and the postmaster cannot be told", q.id);
                return Ok(None);
            }
        };
        let recipients: Vec<RecipientStatus> = failed.iter().map(Failure::status_line).collect();
        let headers = read_headers(q);
        let to_text =
            to.mailbox().map_or_else(|| format!("postmaster@{}", self.users.first_local_domain()), |m| m.to_string());
        let retry_until = q.envelope.arrived + self.retry.max_queue_lifetime.as_secs();
        let action = match action {
            Action::Delayed { .. } => Action::Delayed { retry_until },
            a => a,
        };
        let report = dsn::Report {
            hostname: &self.config.hostname,
            queue_id: q.id.as_str(),
            to: &to_text,
            arrived: q.envelope.arrived,
            now: self.now(),
            action,
            recipients: &recipients,
            original_headers: &headers,
        };
        let message = dsn::build(&report);
        let envelope = Envelope {
            arrived: self.now(),
            client: None,
            helo: None,
            protocol: "LOCAL".into(),
            body: BodyType::EightBitMime,
            // RFC 6533 §3: a report to an address that needs SMTPUTF8 goes with SMTPUTF8.
            smtputf8: q.envelope.smtputf8 || !to_text.is_ascii(),
            auth: None,
            submitted: true,
            quarantine: false,
            from: ReversePath::Null,
            rcpts: vec![to.clone()],
            size: 0,
            check: None,
        };
        let id = self.spool.inject(&envelope, &message)?;
        log::info!("{}: sender non-delivery notification: {id} to {to}", q.id);
        Ok(Some((id, to)))
    }

    /// The delay warning, recorded as `warned` only once it is queued.
    fn warn(
        &self,
        q: &Queued,
        expanded: &[Expanded],
        history: &[Attempt],
        log: &mut DeliveryLog,
    ) -> Result<Option<QueueId>, String> {
        if q.envelope.from == ReversePath::Null {
            return Ok(None);
        }
        let mut delayed = Vec::new();
        for item in expanded {
            let last = history.iter().rev().find(|a| a.recipient == item.key);
            if let Some(last) = last.filter(|a| a.outcome == Outcome::Deferred) {
                delayed.push(Failure { attempt: last, original: Some(&item.original) });
            }
        }
        let made = match self.queue_report(q, &delayed, Action::Delayed { retry_until: 0 }) {
            Ok(made) => made.map(|(id, _)| id),
            Err(e) => {
                self.report_failed(q, "delay warning", &e);
                return Ok(None);
            }
        };
        crate::fault::crash_point("after-warning-queued");
        let status = Some(EnhancedStatus::new(4, 0, 0));
        let text = if q.envelope.quarantine { "no delay warning: quarantined" } else { "delay warning sent" };
        let warned = Attempt::about_message(self.now(), Outcome::Warned, status, text.into());
        log.append(&warned).map_err(|e| self.spool_failure(&q.id, &self.spool.log_path(&q.id), e))?;
        Ok(made)
    }

    /// A dry run's line for one message: where it is, its size and age, who is due, when the
    /// next attempt is, and the last temporary error.
    fn describe(&self, q: &Queued, plan: &Plan, history: &[Attempt]) {
        let age = lifetime_text(self.now().saturating_sub(q.envelope.arrived));
        let last = history.iter().rev().find(|a| a.outcome == Outcome::Deferred);
        println!(
            "{} ({}): from {}, {} octets, {age} old, due now: {}; expired: {}; next attempt: {}; last error: {}",
            q.id,
            q.place.dir(),
            q.envelope.from,
            q.envelope.size,
            if plan.due.is_empty() {
                "nobody".to_string()
            } else {
                plan.due.iter().map(ToString::to_string).collect::<Vec<_>>().join(" ")
            },
            plan.expired.len(),
            plan.next_attempt.map_or_else(|| "-".to_string(), crate::trace::rfc5322_date),
            last.map_or_else(|| "-".to_string(), |a| format!("{} {}", a.status_text(), a.text)),
        );
    }

    /// A dry run also names the held messages, which no run touches.
    fn describe_held(&self) {
        for (found, id) in self.spool.all() {
            if found != crate::spool::manage::Found::Held {
                continue;
            }
            match self.spool.peek(found, &id, 0) {
                Ok((e, _)) => {
                    println!("{id} (hold): from {}, {} octets: held; `postern-queue release {id}`", e.from, e.size)
                }
                Err(err) => println!("{id} (hold): unreadable: {err}"),
            }
        }
    }
}

/// `5 days`, `6 hours`, `90 minutes`: the lifetime in the unit a person would use.
/// Why a quarantined message's failures are reported to nobody.
const QUARANTINED: &str = "no report: the message was quarantined (it failed its author domain's DMARC policy, or a milter marked it as spam)";

/// What goes on top of a message for the Junk folder when another program writes the mailbox
/// (an LMTP server, `mailbox_command`): `X-Spam: Yes`, which its filters (Sieve) file by,
/// whatever marked it (a DMARC quarantine, a milter's own spam field); nothing otherwise, and
/// nothing when the message has that field already (the server's, on top of a message DMARC
/// quarantined): a field is not said twice.
fn junk_mark(q: &Queued) -> &'static [u8] {
    if q.envelope.quarantine && !marked_as_spam(q) { b"X-Spam: Yes\r\n" } else { b"" }
}

/// Whether the message's header section has `X-Spam: Yes`.
fn marked_as_spam(q: &Queued) -> bool {
    let mut head = Vec::new();
    if std::io::Read::read_to_end(
        &mut std::io::Read::take(q.message(), crate::message::MAX_HEADER_SECTION as u64),
        &mut head,
    )
    .is_err()
    {
        return false;
    }
    let (headers, _) = crate::message::Headers::parse(&head);
    headers.fields.iter().any(|f| f.name.eq_ignore_ascii_case("x-spam") && f.value().eq_ignore_ascii_case("yes"))
}

fn lifetime_text(secs: u64) -> String {
    match secs {
        s if s >= 86400 && s % 86400 == 0 => format!("{} days", s / 86400),
        s if s >= 3600 && s % 3600 == 0 => format!("{} hours", s / 3600),
        s => format!("{} minutes", s.div_ceil(60)),
    }
}

fn count(summary: &mut Summary, outcome: Outcome) {
    match outcome {
        Outcome::Sent => summary.sent += 1,
        Outcome::Deferred => summary.deferred += 1,
        Outcome::Bounced => summary.bounced += 1,
        Outcome::Warned | Outcome::Reported | Outcome::Copying | Outcome::Requeued => {}
    }
}

/// One recipient's failure as its report states it: the logged attempt and, where the
/// aliases still say so, the envelope recipient it was expanded from.
struct Failure<'a> {
    attempt: &'a Attempt,
    original: Option<&'a ForwardPath>,
}

impl<'a> Failure<'a> {
    fn of(attempt: &'a Attempt, expanded: &'a [Expanded]) -> Failure<'a> {
        let original = expanded.iter().find(|e| e.key == attempt.recipient).map(|e| &e.original);
        Failure { attempt, original }
    }

    fn is_postmaster(&self) -> bool {
        match self.original {
            Some(ForwardPath::Postmaster) => true,
            Some(ForwardPath::Mailbox(m)) => m.local_part_text().eq_ignore_ascii_case("postmaster"),
            None => self.attempt.recipient.address().is_some_and(|a| a.to_ascii_lowercase().starts_with("postmaster@")),
        }
    }

    fn status_line(&self) -> RecipientStatus {
        let a = self.attempt;
        let original = self.original.map(Recipient::of_path);
        let remote = matches!(a.relay, Where::Remote { .. });
        // An LMTP server's refusal is a reply, as a remote one's is (RFC 3464 §2.3.6).
        let replied = remote || matches!(a.relay, Where::Lmtp(_));
        // A command or a file is no address: the report names the address that led to it.
        let final_recipient = match (a.recipient.address(), &original) {
            (Some(address), _) => address.to_string(),
            (None, Some(Recipient::Address(o))) => o.clone(),
            (None, _) => a.recipient.to_string(),
        };
        let original = original.filter(|o| *o != a.recipient);
        RecipientStatus {
            final_recipient,
            original_recipient: original.and_then(|o| o.address().map(str::to_string)),
            status: a.status.unwrap_or(EnhancedStatus::new(5, 0, 0)),
            remote_mta: remote.then(|| a.relay.to_string()),
            diagnostic: if replied { Diagnostic::Smtp(a.text.clone()) } else { Diagnostic::Local(a.text.clone()) },
            last_attempt: a.time,
        }
    }
}

/// The original header section, read from the queued message.
fn read_headers(q: &Queued) -> Vec<u8> {
    use std::io::Read;
    let mut head = Vec::new();
    let _ = q.message().take(64 * 1024).read_to_end(&mut head);
    head
}

/// How a maildir copy is named, so that a run killed before its outcome is recorded leaves
/// its successor the name to look for.
enum CopyName<'a> {
    /// A fresh name (`maildir::new_name`), noted in the log as a `copying` line first; the
    /// name a killed run noted, if any.
    Noted(Option<&'a str>),
    /// The message's fixed name for this recipient (`maildir::message_name`), the queue
    /// file marked first (`Queued::mark_copy_begun`).
    Fixed(String),
}

/// The name of the maildir copy an earlier run noted for `key` and did not record an
/// outcome for (it was killed in between).
fn interrupted_copy<'a>(history: &'a [Attempt], key: &Recipient) -> Option<&'a str> {
    let last = history.iter().rev().find(|a| a.recipient == *key)?;
    (last.outcome == Outcome::Copying).then_some(last.text.as_str())
}
