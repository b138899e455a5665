//! The few system calls std does not wrap: file locks, user lookup, privilege changes, poll.
//! Each is one small function with its safety argument; nothing else in the crate is unsafe.
#![allow(unsafe_code)]

use std::ffi::CString;
use std::fs::File;
use std::io;
use std::os::fd::{AsRawFd, RawFd};
use std::time::Duration;

/// Takes an exclusive `flock` without waiting; `Ok(false)` when another holder has it.
/// The lock goes with the file descriptor, so a killed holder leaves no stale lock.
pub fn try_lock_exclusive(file: &File) -> io::Result<bool> {
    // SAFETY: flock takes a valid open descriptor, borrowed from `file` for the call.
    let rc = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
    if rc == 0 {
        return Ok(true);
    }
    let err = io::Error::last_os_error();
    if err.raw_os_error() == Some(libc::EWOULDBLOCK) { Ok(false) } else { Err(err) }
}

/// Locks a file for an append as mbox readers expect: flock(2) and a whole-file fcntl(2)
/// write lock, the two kinds they take; retried until `wait` is over.
pub fn lock_for_append(file: &File, wait: Duration) -> io::Result<()> {
    let deadline = std::time::Instant::now() + wait;
    let busy = || io::Error::new(io::ErrorKind::WouldBlock, "locked by another program");
    while !try_lock_exclusive(file)? {
        if std::time::Instant::now() >= deadline {
            return Err(busy());
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    loop {
        // SAFETY: flock is plain data; all-zero is valid before the fields are set.
        let mut lock: libc::flock = unsafe { std::mem::zeroed() };
        lock.l_type = libc::F_WRLCK as libc::c_short;
        lock.l_whence = libc::SEEK_SET as libc::c_short;
        // SAFETY: a valid descriptor and a pointer to a live flock struct.
        if unsafe { libc::fcntl(file.as_raw_fd(), libc::F_SETLK, &lock) } == 0 {
            return Ok(());
        }
        let err = io::Error::last_os_error();
        if !matches!(err.raw_os_error(), Some(libc::EACCES | libc::EAGAIN)) {
            return Err(err);
        }
        if std::time::Instant::now() >= deadline {
            return Err(busy());
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Kills the process group `pgid` (a command and whatever it started), with SIGKILL.
pub fn kill_group(pgid: u32) {
    if let Ok(pgid) = i32::try_from(pgid)
        && pgid > 1
    {
        // SAFETY: kill takes plain integers; a group that is gone only yields ESRCH.
        unsafe {
            libc::kill(-pgid, libc::SIGKILL);
        }
    }
}

/// Releases an flock taken with `try_lock_exclusive`, before the file is closed.
pub fn unlock(file: &File) -> io::Result<()> {
    // SAFETY: flock takes a valid open descriptor, borrowed from `file` for the call.
    if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_UN) } == 0 { Ok(()) } else { Err(io::Error::last_os_error()) }
}

/// A user's IDs from the password database.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UserIds {
    pub uid: u32,
    pub gid: u32,
}

pub fn lookup_user(name: &str) -> io::Result<Option<UserIds>> {
    let cname = CString::new(name).map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "NUL in user name"))?;
    let mut pwd: libc::passwd = unsafe_zeroed_passwd();
    let mut buf = vec![0 as libc::c_char; 16 * 1024];
    let mut result: *mut libc::passwd = std::ptr::null_mut();
    // SAFETY: every pointer refers to live, correctly sized storage owned by this frame;
    // getpwnam_r writes only inside `pwd` and `buf` and sets `result`.
    let rc = unsafe { libc::getpwnam_r(cname.as_ptr(), &mut pwd, buf.as_mut_ptr(), buf.len(), &mut result) };
    if rc != 0 {
        return Err(io::Error::from_raw_os_error(rc));
    }
    Ok((!result.is_null()).then_some(UserIds { uid: pwd.pw_uid, gid: pwd.pw_gid }))
}

/// A group's ID from the group database.
pub fn lookup_group(name: &str) -> io::Result<Option<u32>> {
    let cname = CString::new(name).map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "NUL in group name"))?;
    // SAFETY: group is plain old data (integers and pointers); all-zero is a valid value.
    let mut grp: libc::group = unsafe { std::mem::zeroed() };
    let mut buf = vec![0 as libc::c_char; 64 * 1024];
    let mut result: *mut libc::group = std::ptr::null_mut();
    // SAFETY: every pointer refers to live, correctly sized storage owned by this frame;
    // getgrnam_r writes only inside `grp` and `buf` and sets `result`.
    let rc = unsafe { libc::getgrnam_r(cname.as_ptr(), &mut grp, buf.as_mut_ptr(), buf.len(), &mut result) };
    if rc != 0 {
        return Err(io::Error::from_raw_os_error(rc));
    }
    Ok((!result.is_null()).then_some(grp.gr_gid))
}

fn unsafe_zeroed_passwd() -> libc::passwd {
    // SAFETY: passwd is plain old data (integers and pointers); all-zero is a valid value.
    unsafe { std::mem::zeroed() }
}

pub fn effective_uid() -> u32 {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() }
}

pub fn effective_gid() -> u32 {
    // SAFETY: getegid has no preconditions and cannot fail.
    unsafe { libc::getegid() }
}

pub fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() == 0 }
}

/// Drops to `user` for good: supplementary groups, then gid, then uid (CERT POS36-C),
/// then checks that root cannot be regained (POS37-C). Called before any thread exists.
pub fn drop_privileges(user: UserIds) -> io::Result<()> {
    // SAFETY: plain system calls on integers; an empty group list with a null pointer is allowed.
    let steps = unsafe { [libc::setgroups(0, std::ptr::null()), libc::setgid(user.gid), libc::setuid(user.uid)] };
    if steps.iter().any(|&rc| rc != 0) {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: as above; this call is expected to fail.
    if user.uid != 0 && unsafe { libc::setuid(0) } == 0 {
        return Err(io::Error::other("setuid(0) succeeded after dropping privileges"));
    }
    Ok(())
}

/// Started as root with a service user configured, becomes that user for good; otherwise
/// does nothing. Returns the IDs switched to, for the log.
pub fn become_user(user: Option<&str>) -> Result<Option<UserIds>, String> {
    let Some(user) = user else { return Ok(None) };
    if !is_root() {
        return Ok(None);
    }
    let ids =
        lookup_user(user).map_err(|e| format!("user {user}: {e}"))?.ok_or(format!("user {user}: no such user"))?;
    drop_privileges(ids).map_err(|e| format!("cannot drop privileges to {user}: {e}"))?;
    Ok(Some(ids))
}

/// Waits until `fd` is readable, up to `timeout`; `Ok(false)` on timeout.
pub fn wait_readable(fd: RawFd, timeout: Option<Duration>) -> io::Result<bool> {
    let ms = timeout.map_or(-1, |t| i32::try_from(t.as_millis()).unwrap_or(i32::MAX));
    let mut pfd = libc::pollfd { fd, events: libc::POLLIN, revents: 0 };
    loop {
        // SAFETY: one valid pollfd, count 1.
        let rc = unsafe { libc::poll(&mut pfd, 1, ms) };
        if rc >= 0 {
            return Ok(rc > 0);
        }
        let err = io::Error::last_os_error();
        if err.kind() != io::ErrorKind::Interrupted {
            return Err(err);
        }
    }
}

/// The descriptors passed by systemd socket activation (sd_listen_fds(3)), from fd 3 on.
pub fn listen_fds() -> Vec<RawFd> {
    let for_us = std::env::var("LISTEN_PID").ok().and_then(|p| p.parse::<u32>().ok()) == Some(std::process::id());
    let count = std::env::var("LISTEN_FDS").ok().and_then(|n| n.parse::<i32>().ok()).unwrap_or(0);
    if !for_us || count <= 0 {
        return Vec::new();
    }
    (3..3 + count.min(64)).collect()
}

/// The names systemd gave the passed descriptors (`FileDescriptorName=`, in LISTEN_FDNAMES),
/// one per descriptor; empty when it gave none.
pub fn listen_fd_names() -> Vec<String> {
    std::env::var("LISTEN_FDNAMES").map(|v| v.split(':').map(str::to_string).collect()).unwrap_or_default()
}

/// Reads one line from standard input; when that is a terminal, with echo off and a prompt.
pub fn read_password(prompt: &str) -> std::io::Result<String> {
    use std::io::{BufRead, Write};
    // SAFETY: isatty only inspects the descriptor.
    let tty = unsafe { libc::isatty(0) } == 1;
    // SAFETY: an all-zero termios is a valid out-parameter; tcgetattr only writes into it.
    let mut saved: libc::termios = unsafe { std::mem::zeroed() };
    // SAFETY: fd 0 is a terminal (checked) and `saved` is valid for writes.
    let quiet = tty && unsafe { libc::tcgetattr(0, &mut saved) } == 0;
    if quiet {
        let mut silent = saved;
        silent.c_lflag &= !libc::ECHO;
        // SAFETY: `silent` is a termios read from this terminal with one flag changed.
        unsafe { libc::tcsetattr(0, libc::TCSANOW, &silent) };
        eprint!("{prompt}");
        let _ = std::io::stderr().flush();
    }
    let mut line = String::new();
    let read = std::io::stdin().lock().read_line(&mut line);
    if quiet {
        // SAFETY: restores the settings read above.
        unsafe { libc::tcsetattr(0, libc::TCSANOW, &saved) };
        eprintln!();
    }
    read?;
    Ok(line.trim_end_matches(['\n', '\r']).to_string())
}

/// Whether `fd` is a socket (inetd gives one; a test may give a pipe).
pub fn is_socket(fd: RawFd) -> bool {
    // SAFETY: an all-zero stat is a valid out-parameter; fstat only writes into it.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    // SAFETY: fstat on any integer is safe; an invalid fd returns an error.
    let rc = unsafe { libc::fstat(fd, &mut st) };
    rc == 0 && (st.st_mode & libc::S_IFMT) == libc::S_IFSOCK
}

/// The system's host name.
pub fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .ok()
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "localhost".to_string())
}

/// The host's fully qualified name, as `hostname -f` finds it without DNS: the kernel's name
/// when it has a dot, else the first dotted name of its line in /etc/hosts, else the
/// kernel's name (which `--check` and the server warn about).
pub fn fqdn() -> String {
    let short = hostname();
    let hosts = std::fs::read_to_string("/etc/hosts").unwrap_or_default();
    qualify(&short, &hosts)
}

/// The dotted name for `short` in /etc/hosts text (`127.0.1.1 vm.example.org vm`).
pub fn qualify(short: &str, hosts: &str) -> String {
    if short.contains('.') {
        return short.to_string();
    }
    for line in hosts.lines() {
        let line = line.split('#').next().unwrap_or("");
        let names: Vec<&str> = line.split_whitespace().skip(1).collect();
        if names.iter().any(|n| n.eq_ignore_ascii_case(short))
            && let Some(full) = names.iter().find(|n| n.contains('.') && !n.ends_with('.'))
        {
            return full.to_string();
        }
    }
    short.to_string()
}

/// Adopts a listening socket passed by systemd (fd 3 and up).
pub fn listener_from_fd(fd: RawFd) -> std::net::TcpListener {
    use std::os::fd::FromRawFd;
    // SAFETY: the fd comes from `listen_fds`, which systemd hands over to this process alone;
    // it is owned from here on and closed with the listener.
    unsafe { std::net::TcpListener::from_raw_fd(fd) }
}

/// Adopts standard input as the connection when inetd passed a socket.
pub fn stream_from_stdin() -> std::net::TcpStream {
    use std::os::fd::FromRawFd;
    // SAFETY: fd 0 is open (checked by `is_socket` before this call) and is a socket;
    // the session owns it for the rest of the process.
    unsafe { std::net::TcpStream::from_raw_fd(0) }
}

/// Gives the memory the allocator holds free back to the system (malloc_trim(3), glibc: every
/// arena, and the free pages inside them). Elsewhere the allocator keeps its own counsel.
pub fn release_free_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim takes no pointer and may be called from any thread at any time.
    unsafe {
        libc::malloc_trim(0);
    }
}

/// At most `arenas` allocator arenas (glibc's mallopt(M_ARENA_MAX)), instead of eight a core:
/// a thread per session would otherwise spread what sessions allocate over many arenas, each
/// keeping its high-water mark. Threads share them; their caches take most allocations.
pub fn limit_allocator_arenas(arenas: i32) {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt takes two integers; it runs before the threads it concerns exist.
    unsafe {
        libc::mallopt(libc::M_ARENA_MAX, arenas);
    }
}

/// glibc keeps the stacks of ended threads for new ones, up to 40 MiB of them by default (its
/// tunable glibc.pthread.stack_cache_size): after thousands of sessions have ended, some 150
/// stacks whose touched pages stay private memory (2.4 MiB measured after 9,984 sessions).
/// A tunable is read only as a process starts, so the daemon starts itself again, once, with
/// the cache at most `bytes`: the same program, arguments, environment otherwise, process ID
/// and descriptors (a listener systemd passed stays ours). Returns without doing anything when
/// the cache is set already (by the administrator, or by this), under another C library, or
/// when the exec fails (the default cache is then kept). Call it before any thread starts.
pub fn limit_thread_stack_cache(bytes: usize) {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        use std::os::unix::process::CommandExt;
        const TUNABLE: &str = "glibc.pthread.stack_cache_size";
        let current = std::env::var_os("GLIBC_TUNABLES");
        if current.as_ref().is_some_and(|v| v.to_string_lossy().contains(TUNABLE)) {
            return;
        }
        let mut tunables = std::ffi::OsString::new();
        if let Some(current) = current.filter(|c| !c.is_empty()) {
            tunables.push(current);
            tunables.push(":");
        }
        tunables.push(format!("{TUNABLE}={bytes}"));
        let mut args = std::env::args_os();
        let Some(name) = args.next() else { return };
        // The program under the name it was run as (a link beside it, for the programs that
        // are one), so that its process keeps that name in ps and for pkill.
        let Some(base) = std::path::Path::new(&name).file_name() else { return };
        let Ok(program) = std::env::current_exe().map(|p| p.with_file_name(base)) else { return };
        if !program.is_file() {
            return;
        }
        // Only an error comes back; the default cache is then kept.
        let _ = std::process::Command::new(program).arg0(&name).args(args).env("GLIBC_TUNABLES", tunables).exec();
    }
    #[cfg(not(all(target_os = "linux", target_env = "gnu")))]
    let _ = bytes;
}

/// Flushes the whole filesystem that holds `file` (syncfs(2)): one device flush for every
/// file written on it so far, which is how concurrent commits share a flush.
pub fn sync_filesystem(file: &File) -> io::Result<()> {
    // SAFETY: syncfs takes a valid open descriptor, borrowed from `file` for the call.
    if unsafe { libc::syncfs(file.as_raw_fd()) } == 0 { Ok(()) } else { Err(io::Error::last_os_error()) }
}

/// Moves `from` to `to` unless `to` exists (renameat2 with RENAME_NOREPLACE), so a name
/// collision can never replace a queued message. `Ok(false)` where the filesystem or kernel
/// lacks the flag; the caller then links and unlinks instead.
pub fn rename_no_replace(from: &std::path::Path, to: &std::path::Path) -> io::Result<bool> {
    use std::os::unix::ffi::OsStrExt;
    let c = |p: &std::path::Path| {
        CString::new(p.as_os_str().as_bytes()).map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "NUL in path"))
    };
    let (from, to) = (c(from)?, c(to)?);
    // SAFETY: both paths are NUL-terminated strings that live across the call.
    let rc =
        unsafe { libc::renameat2(libc::AT_FDCWD, from.as_ptr(), libc::AT_FDCWD, to.as_ptr(), libc::RENAME_NOREPLACE) };
    if rc == 0 {
        return Ok(true);
    }
    let err = io::Error::last_os_error();
    match err.raw_os_error() {
        Some(libc::EINVAL | libc::ENOSYS) => Ok(false),
        _ => Err(err),
    }
}

fn control_set() -> libc::sigset_t {
    // SAFETY: sigset_t is plain data; sigemptyset initialises it before sigaddset reads it.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        libc::sigaddset(&mut set, libc::SIGTERM);
        libc::sigaddset(&mut set, libc::SIGINT);
        libc::sigaddset(&mut set, libc::SIGHUP);
        set
    }
}

/// Blocks SIGTERM, SIGINT and SIGHUP in this thread and every thread it starts afterwards,
/// so that `wait_control_signal` alone receives them (children start with none blocked).
pub fn block_control_signals() -> io::Result<()> {
    let set = control_set();
    // SAFETY: a valid, initialised signal set; the old mask is not wanted.
    let rc = unsafe { libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut()) };
    if rc == 0 { Ok(()) } else { Err(io::Error::from_raw_os_error(rc)) }
}

/// For a program that only prints (a queue listing): a reader that stops early (`mailq |
/// head`) ends it quietly, as it ends `ls`, instead of a failed write on a closed pipe.
pub fn end_quietly_on_closed_pipe() {
    // SAFETY: installs the default action for one signal; no handler code runs.
    unsafe { libc::signal(libc::SIGPIPE, libc::SIG_DFL) };
}

/// Waits for SIGTERM, SIGINT or SIGHUP (blocked beforehand) and returns its number.
pub fn wait_control_signal() -> i32 {
    let set = control_set();
    let mut signal: libc::c_int = 0;
    loop {
        // SAFETY: valid set and out-parameter; sigwait only writes `signal`.
        if unsafe { libc::sigwait(&set, &mut signal) } == 0 {
            return signal;
        }
    }
}

/// The filesystem type of `path` as statfs(2) reports it (f_type magic number).
pub fn filesystem_magic(path: &std::path::Path) -> io::Result<i64> {
    use std::os::unix::ffi::OsStrExt;
    let c = CString::new(path.as_os_str().as_bytes()).map_err(|_| io::Error::other("NUL in path"))?;
    // SAFETY: statfs is plain data; all-zero is valid and statfs only writes into it.
    let mut st: libc::statfs = unsafe { std::mem::zeroed() };
    // SAFETY: a NUL-terminated path and a valid out-parameter.
    if unsafe { libc::statfs(c.as_ptr(), &mut st) } != 0 {
        return Err(io::Error::last_os_error());
    }
    #[allow(clippy::unnecessary_cast)] // f_type's width differs between targets
    Ok(st.f_type as i64)
}

/// Allocates `len` bytes of `file` from `offset` on without changing its size
/// (fallocate(2) with FALLOC_FL_KEEP_SIZE), so later appends into that range cannot fail
/// with ENOSPC. `Ok(false)` where the filesystem cannot reserve space this way.
pub fn reserve_space(file: &File, offset: u64, len: u64) -> io::Result<bool> {
    let (Ok(offset), Ok(len)) = (libc::off_t::try_from(offset), libc::off_t::try_from(len)) else {
        return Err(io::Error::new(io::ErrorKind::InvalidInput, "reservation out of range"));
    };
    // SAFETY: fallocate takes a valid open descriptor, borrowed from `file`, and integers.
    let rc = unsafe { libc::fallocate(file.as_raw_fd(), libc::FALLOC_FL_KEEP_SIZE, offset, len) };
    if rc == 0 {
        return Ok(true);
    }
    let err = io::Error::last_os_error();
    match err.raw_os_error() {
        Some(libc::EOPNOTSUPP | libc::ENOSYS) => Ok(false),
        _ => Err(err),
    }
}

/// Raises the soft limit on open descriptors to the hard limit; returns the limit now in force.
pub fn raise_descriptor_limit() -> io::Result<u64> {
    let mut lim = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: getrlimit and setrlimit only read and write the struct passed.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) } != 0 {
        return Err(io::Error::last_os_error());
    }
    if lim.rlim_cur < lim.rlim_max {
        let raised = libc::rlimit { rlim_cur: lim.rlim_max, rlim_max: lim.rlim_max };
        if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &raised) } == 0 {
            lim.rlim_cur = lim.rlim_max;
        }
    }
    Ok(lim.rlim_cur)
}

/// shutdown(2) for reading on a socket by its descriptor; a descriptor that is no longer a
/// socket only gets an error back, which is ignored.
pub fn shutdown_read(fd: RawFd) {
    // SAFETY: shutdown takes a plain integer and touches no memory of ours.
    unsafe {
        libc::shutdown(fd, libc::SHUT_RD);
    }
}

/// An account in the password database: login name, IDs, the full name from the GECOS field
/// (up to its first comma) and the home directory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Account {
    pub name: String,
    pub uid: u32,
    pub gid: u32,
    pub full_name: Option<String>,
    pub home: std::path::PathBuf,
    /// The login shell; empty means /bin/sh (passwd(5)).
    pub shell: std::path::PathBuf,
}

/// The account of `uid`.
pub fn account(uid: u32) -> io::Result<Option<Account>> {
    let mut pwd: libc::passwd = unsafe_zeroed_passwd();
    let mut buf = vec![0 as libc::c_char; 16 * 1024];
    let mut result: *mut libc::passwd = std::ptr::null_mut();
    // SAFETY: as in `lookup_user`: all storage is owned by this frame and correctly sized.
    let rc = unsafe { libc::getpwuid_r(uid, &mut pwd, buf.as_mut_ptr(), buf.len(), &mut result) };
    account_from(rc, &pwd, result)
}

/// The account named `name`.
pub fn account_named(name: &str) -> io::Result<Option<Account>> {
    let cname = CString::new(name).map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "NUL in user name"))?;
    let mut pwd: libc::passwd = unsafe_zeroed_passwd();
    let mut buf = vec![0 as libc::c_char; 16 * 1024];
    let mut result: *mut libc::passwd = std::ptr::null_mut();
    // SAFETY: as in `lookup_user`.
    let rc = unsafe { libc::getpwnam_r(cname.as_ptr(), &mut pwd, buf.as_mut_ptr(), buf.len(), &mut result) };
    account_from(rc, &pwd, result)
}

/// Copies what a successful getpw*_r call filled in, while its buffer is still alive.
fn account_from(rc: i32, pwd: &libc::passwd, result: *mut libc::passwd) -> io::Result<Option<Account>> {
    use std::ffi::CStr;
    if rc != 0 {
        return Err(io::Error::from_raw_os_error(rc));
    }
    if result.is_null() {
        return Ok(None);
    }
    let text = |p: *const libc::c_char| {
        // SAFETY: the call succeeded, so each non-null field points at a NUL-terminated
        // string inside the caller's buffer, which outlives this function.
        (!p.is_null()).then(|| unsafe { CStr::from_ptr(p) }.to_string_lossy().into_owned())
    };
    let full_name = text(pwd.pw_gecos)
        .and_then(|g| g.split(',').next().map(str::trim).map(str::to_string))
        .filter(|g| !g.is_empty());
    Ok(Some(Account {
        name: text(pwd.pw_name).unwrap_or_default(),
        uid: pwd.pw_uid,
        gid: pwd.pw_gid,
        full_name,
        home: text(pwd.pw_dir).unwrap_or_default().into(),
        shell: text(pwd.pw_shell).unwrap_or_default().into(),
    }))
}

/// The groups `name` is in (its own `gid` first), from the group database.
pub fn groups_of(name: &str, gid: u32) -> io::Result<Vec<u32>> {
    let cname = CString::new(name).map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "NUL in user name"))?;
    let mut count: libc::c_int = 64;
    loop {
        let mut groups = vec![0 as libc::gid_t; usize::try_from(count).unwrap_or(64)];
        let mut n = count;
        // SAFETY: `groups` holds `n` entries; getgrouplist writes at most that many and sets `n`.
        let rc = unsafe { libc::getgrouplist(cname.as_ptr(), gid, groups.as_mut_ptr(), &mut n) };
        if rc >= 0 {
            groups.truncate(usize::try_from(n).unwrap_or(0));
            return Ok(groups);
        }
        if n <= count || n > 65_536 {
            return Err(io::Error::other("getgrouplist failed"));
        }
        count = n;
    }
}

/// Makes `command` run as this user: its groups, then its gid, then its uid, set in the
/// child between fork and exec (only async-signal-safe calls there), with umask 077.
pub fn run_as(command: &mut std::process::Command, uid: u32, gid: u32, groups: Vec<u32>) {
    use std::os::unix::process::CommandExt;
    // SAFETY: the closure runs in the forked child before exec and calls only setgroups,
    // setgid, setuid and umask, which are async-signal-safe; it reads only `groups`, moved in.
    unsafe {
        command.pre_exec(move || {
            let steps = [libc::setgroups(groups.len(), groups.as_ptr()), libc::setgid(gid), libc::setuid(uid)];
            if steps.iter().any(|&rc| rc != 0) {
                return Err(io::Error::last_os_error());
            }
            if uid != 0 && libc::setuid(0) == 0 {
                return Err(io::Error::from_raw_os_error(libc::EPERM));
            }
            libc::umask(0o077);
            Ok(())
        });
    }
}

pub fn real_uid() -> u32 {
    // SAFETY: getuid has no preconditions and cannot fail.
    unsafe { libc::getuid() }
}

pub fn real_gid() -> u32 {
    // SAFETY: getgid has no preconditions and cannot fail.
    unsafe { libc::getgid() }
}

/// Whether the program runs with IDs its caller does not have (a setuid or setgid binary).
pub fn is_set_id() -> bool {
    real_uid() != effective_uid() || real_gid() != effective_gid()
}

/// Gives up a setgid program's group for good: real, effective and saved group IDs all
/// become the caller's own.
pub fn drop_set_group() -> io::Result<()> {
    let gid = real_gid();
    // SAFETY: plain system call on integers.
    if unsafe { libc::setresgid(gid, gid, gid) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Makes writes to `fd` return WouldBlock instead of waiting (a pipe to a process that
/// may be stopped).
pub fn set_nonblocking(fd: &impl AsRawFd) -> io::Result<()> {
    let fd = fd.as_raw_fd();
    // SAFETY: fcntl on a descriptor the caller owns, with integer arguments.
    let flags = unsafe { libc::fcntl(fd, libc::F_GETFL) };
    // SAFETY: as above.
    if flags < 0 || unsafe { libc::fcntl(fd, libc::F_SETFL, flags | libc::O_NONBLOCK) } < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Runs `f` with `gid` as the effective group, then goes back to the real group: a setgid
/// program that keeps its group only as the saved one takes it up for one step at a time.
pub fn with_effective_group<T>(gid: u32, f: impl FnOnce() -> io::Result<T>) -> io::Result<T> {
    // SAFETY: plain system call on an integer.
    if unsafe { libc::setegid(gid) } != 0 {
        return Err(io::Error::last_os_error());
    }
    let result = f();
    lower_set_group()?;
    result
}

/// A setgid program's group becomes its saved group only: the effective group is the
/// caller's, until `with_effective_group` takes it up again.
pub fn lower_set_group() -> io::Result<()> {
    // SAFETY: plain system call on an integer.
    if unsafe { libc::setegid(real_gid()) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// An inotify descriptor that becomes readable when a name is moved into `dir` (a maildrop
/// writer's rename); non-blocking, closed on exec.
pub fn watch_moves_into(dir: &std::path::Path) -> io::Result<std::os::fd::OwnedFd> {
    watch(dir, libc::IN_MOVED_TO)
}

/// An inotify descriptor that reports each name made in `dir` by a link (a commit of an
/// anonymous file) or moved into it (a commit of a named one, a release from hold/); read
/// with `read_names`. Non-blocking, closed on exec.
pub fn watch_names_made_in(dir: &std::path::Path) -> io::Result<std::os::fd::OwnedFd> {
    watch(dir, libc::IN_CREATE | libc::IN_MOVED_TO)
}

fn watch(dir: &std::path::Path, mask: u32) -> io::Result<std::os::fd::OwnedFd> {
    use std::os::fd::FromRawFd;
    use std::os::unix::ffi::OsStrExt;
    let path = CString::new(dir.as_os_str().as_bytes())
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "NUL in path"))?;
    // SAFETY: plain system call with flags.
    let fd = unsafe { libc::inotify_init1(libc::IN_NONBLOCK | libc::IN_CLOEXEC) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `fd` was just returned by inotify_init1 and is owned here alone.
    let owned = unsafe { std::os::fd::OwnedFd::from_raw_fd(fd) };
    // SAFETY: a valid inotify descriptor and a NUL-terminated path that lives across the call.
    if unsafe { libc::inotify_add_watch(fd, path.as_ptr(), mask) } < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(owned)
}

/// What a read of an inotify descriptor gave: the names its events carry, and whether the
/// kernel's event queue overflowed (events were lost: the directory must be listed).
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Names {
    pub names: Vec<std::ffi::OsString>,
    pub overflowed: bool,
}

/// Reads every pending event of a non-blocking inotify descriptor (inotify(7)).
pub fn read_names(fd: &std::os::fd::OwnedFd) -> Names {
    let mut out = Names::default();
    // Read at each wakeup of the instant delivery process: no allocation for it.
    let mut buf = [0u8; 8192];
    loop {
        // SAFETY: reads into a buffer owned by this frame, at most its length.
        let n = unsafe { libc::read(fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len()) };
        let Ok(n) = usize::try_from(n) else { break };
        if n == 0 {
            break;
        }
        parse_events(&buf[..n], &mut out);
    }
    out
}

/// The events in `bytes`, each `struct inotify_event` (wd, mask, cookie, len: four 32-bit
/// words in the machine's order) and its NUL-padded name of `len` octets; a torn last event
/// is left out.
pub fn parse_events(bytes: &[u8], out: &mut Names) {
    use std::os::unix::ffi::OsStrExt;
    let word = |at: usize| bytes.get(at..at + 4).map(|w| u32::from_ne_bytes([w[0], w[1], w[2], w[3]]));
    let mut at = 0;
    while let (Some(mask), Some(len)) = (word(at + 4), word(at + 12)) {
        let start = at + 16;
        let Some(name) = bytes.get(start..start + len as usize) else { break };
        if mask & libc::IN_Q_OVERFLOW != 0 {
            out.overflowed = true;
        }
        let name = &name[..name.iter().position(|&b| b == 0).unwrap_or(name.len())];
        if !name.is_empty() {
            out.names.push(std::ffi::OsStr::from_bytes(name).to_os_string());
        }
        at = start + len as usize;
    }
}

/// One read(2) of `fd` into `buf`: what is there, without waiting for more once poll said
/// the descriptor is readable.
pub fn read_once(fd: RawFd, buf: &mut [u8]) -> io::Result<usize> {
    loop {
        // SAFETY: reads into a buffer the caller owns, at most its length.
        let n = unsafe { libc::read(fd, buf.as_mut_ptr().cast(), buf.len()) };
        if let Ok(n) = usize::try_from(n) {
            return Ok(n);
        }
        let err = io::Error::last_os_error();
        if err.kind() != io::ErrorKind::Interrupted {
            return Err(err);
        }
    }
}

/// Waits until one of `fds` is readable (or at its end, or in error), up to `timeout`;
/// which of them are.
pub fn wait_any_readable(fds: &[RawFd], timeout: Duration) -> io::Result<Vec<bool>> {
    let ms = i32::try_from(timeout.as_millis()).unwrap_or(i32::MAX);
    let mut pfds: Vec<libc::pollfd> =
        fds.iter().map(|&fd| libc::pollfd { fd, events: libc::POLLIN, revents: 0 }).collect();
    loop {
        // SAFETY: a valid array of `pfds.len()` pollfds, alive across the call.
        let rc = unsafe { libc::poll(pfds.as_mut_ptr(), pfds.len() as libc::nfds_t, ms) };
        if rc >= 0 {
            return Ok(pfds.iter().map(|p| p.revents != 0).collect());
        }
        let err = io::Error::last_os_error();
        if err.kind() != io::ErrorKind::Interrupted {
            return Err(err);
        }
    }
}

/// The descriptor number a child started with `pass_as_fd3` finds its passed file under.
pub const PASSED_FD: RawFd = 3;

/// Makes `command`'s child find `fd` open as descriptor 3 (and nothing else of this
/// process's, which opens everything close-on-exec): how a held lock is handed over, as
/// flock(2) locks go with the open file, not the process.
pub fn pass_as_fd3(command: &mut std::process::Command, fd: RawFd) {
    use std::os::unix::process::CommandExt;
    // SAFETY: the closure runs in the forked child before exec and calls only dup2 and
    // fcntl, which are async-signal-safe, on integers.
    unsafe {
        command.pre_exec(move || {
            if fd == PASSED_FD {
                let flags = libc::fcntl(fd, libc::F_GETFD);
                if flags < 0 || libc::fcntl(fd, libc::F_SETFD, flags & !libc::FD_CLOEXEC) < 0 {
                    return Err(io::Error::last_os_error());
                }
            } else if libc::dup2(fd, PASSED_FD) < 0 {
                return Err(io::Error::last_os_error());
            }
            Ok(())
        });
    }
}

/// Takes descriptor 3, passed by the parent (`pass_as_fd3`), as a file of this process's,
/// closed on exec from now on; `None` when nothing is open there.
pub fn take_passed_fd() -> Option<File> {
    use std::os::fd::FromRawFd;
    // SAFETY: fcntl on an integer; a descriptor that is not open only yields EBADF.
    let flags = unsafe { libc::fcntl(PASSED_FD, libc::F_GETFD) };
    if flags < 0 {
        return None;
    }
    // SAFETY: as above, on a descriptor known to be open.
    if unsafe { libc::fcntl(PASSED_FD, libc::F_SETFD, flags | libc::FD_CLOEXEC) } < 0 {
        return None;
    }
    // SAFETY: descriptor 3 is open and nothing else in this process owns it: it was
    // inherited, and std opens its own descriptors close-on-exec, after it.
    Some(unsafe { File::from_raw_fd(PASSED_FD) })
}

/// Reads and discards every pending event of a non-blocking descriptor.
pub fn drain(fd: &std::os::fd::OwnedFd) {
    let mut buf = [0u8; 4096];
    loop {
        // SAFETY: reads into a buffer owned by this frame, at most its length.
        let n = unsafe { libc::read(fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len()) };
        if n <= 0 {
            break;
        }
    }
}

/// The type name the kernel mounted `path`'s filesystem as (`ext4`, `xfs`, ...), from the
/// line of /proc/self/mountinfo whose device is `path`'s; `None` when none matches.
pub fn mount_type(path: &std::path::Path) -> Option<String> {
    use std::os::unix::fs::MetadataExt;
    let dev = std::fs::metadata(path).ok()?.dev();
    let device = format!("{}:{}", libc::major(dev), libc::minor(dev));
    let table = std::fs::read_to_string("/proc/self/mountinfo").ok()?;
    mount_type_in(&table, &device)
}

/// The type of the last mount of `device` (`MAJOR:MINOR`) in a mountinfo table: a later
/// mount hides an earlier one (proc(5): field 3, then the type after the ` - ` separator).
fn mount_type_in(table: &str, device: &str) -> Option<String> {
    table
        .lines()
        .filter(|line| line.split(' ').nth(2) == Some(device))
        .filter_map(|line| line.split_once(" - ").and_then(|(_, rest)| rest.split(' ').next()))
        .next_back()
        .map(str::to_string)
}

/// A file with no name (O_TMPFILE), mode 0600, in the directory `dir` is open on: no path is
/// walked to make it. Fails as `open(2)` with O_TMPFILE does where there are none.
pub fn open_anonymous_in(dir: &File) -> io::Result<File> {
    use std::os::fd::FromRawFd;
    let flags = libc::O_TMPFILE | libc::O_RDWR | libc::O_CLOEXEC;
    // SAFETY: a NUL-terminated path valid for the call; the descriptor returned is new and ours.
    let fd = unsafe { libc::openat(dir.as_raw_fd(), c".".as_ptr(), flags, 0o600 as libc::c_uint) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `fd` was just opened and nothing else owns it.
    Ok(unsafe { File::from_raw_fd(fd) })
}

/// Gives the anonymous file `file` the name `name` in the directory `dir` is open on, never
/// over an existing name, as `link_anonymous` does; through this process's own /proc/PID/fd,
/// opened once, so that a link looks up one name there and one in `dir`, not two paths.
pub fn link_anonymous_in(file: &File, dir: &File, name: &str) -> io::Result<()> {
    let nul = |_| io::Error::other("NUL in a name");
    let to = CString::new(name).map_err(nul)?;
    let fd = file.as_raw_fd();
    let (from_dir, from) = match own_fd_dir() {
        Some(fds) => (fds, CString::new(fd.to_string()).map_err(nul)?),
        None => (libc::AT_FDCWD, CString::new(format!("/proc/self/fd/{fd}")).map_err(nul)?),
    };
    // SAFETY: two NUL-terminated names valid for the call and two open descriptors (or
    // AT_FDCWD); linkat only reads them.
    let r = unsafe { libc::linkat(from_dir, from.as_ptr(), dir.as_raw_fd(), to.as_ptr(), libc::AT_SYMLINK_FOLLOW) };
    if r == 0 { Ok(()) } else { Err(io::Error::last_os_error()) }
}

/// This process's /proc/PID/fd, opened at the first call; `None` where /proc cannot be
/// opened, and in a child forked after the first call, whose descriptors it does not list.
fn own_fd_dir() -> Option<RawFd> {
    static OPENED: std::sync::OnceLock<Option<(u32, File)>> = std::sync::OnceLock::new();
    let (pid, dir) = OPENED
        .get_or_init(|| {
            let pid = std::process::id();
            File::open(format!("/proc/{pid}/fd")).ok().map(|dir| (pid, dir))
        })
        .as_ref()?;
    (*pid == std::process::id()).then(|| dir.as_raw_fd())
}

/// Gives the anonymous file `file` (opened with O_TMPFILE) the name `to`, never over an
/// existing name (linkat(2) fails with EEXIST). Through /proc/self/fd, which needs no
/// privilege, where AT_EMPTY_PATH needs CAP_DAC_READ_SEARCH.
pub fn link_anonymous(file: &File, to: &std::path::Path) -> io::Result<()> {
    use std::os::unix::ffi::OsStrExt;
    let from = CString::new(format!("/proc/self/fd/{}", file.as_raw_fd())).map_err(|_| io::Error::other("NUL"))?;
    let to = CString::new(to.as_os_str().as_bytes()).map_err(|_| io::Error::other("NUL in path"))?;
    // SAFETY: two NUL-terminated paths valid for the call; linkat only reads them.
    let r =
        unsafe { libc::linkat(libc::AT_FDCWD, from.as_ptr(), libc::AT_FDCWD, to.as_ptr(), libc::AT_SYMLINK_FOLLOW) };
    if r == 0 { Ok(()) } else { Err(io::Error::last_os_error()) }
}

#[cfg(test)]
mod inotify_tests {
    use super::*;

    fn event(mask: u32, name: &[u8], padded: usize) -> Vec<u8> {
        let mut out = Vec::new();
        for w in [1u32, mask, 0, padded as u32] {
            out.extend_from_slice(&w.to_ne_bytes());
        }
        out.extend_from_slice(name);
        out.resize(out.len() + padded - name.len(), 0);
        out
    }

    #[test]
    fn events_give_their_names_and_a_torn_one_is_left() {
        let mut bytes = event(libc::IN_CREATE, b"1795431945.A1", 16);
        bytes.extend(event(libc::IN_Q_OVERFLOW, b"", 0));
        bytes.extend(event(libc::IN_MOVED_TO, b"x", 4));
        let whole = bytes.len();
        bytes.extend(event(libc::IN_CREATE, b"torn", 8));
        bytes.truncate(whole + 20);
        let mut out = Names::default();
        parse_events(&bytes, &mut out);
        assert_eq!(out.names, ["1795431945.A1", "x"]);
        assert!(out.overflowed);
    }

    #[test]
    fn a_name_made_in_a_watched_directory_is_read() {
        let dir = std::env::temp_dir().join(format!("postern-inotify-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let watch = watch_names_made_in(&dir).unwrap();
        assert!(read_names(&watch).names.is_empty());
        std::fs::write(dir.join("made"), b"x").unwrap();
        assert!(wait_any_readable(&[watch.as_raw_fd()], Duration::from_secs(5)).unwrap()[0]);
        assert_eq!(read_names(&watch).names, ["made"]);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}

#[cfg(test)]
mod mount_tests {
    #[test]
    fn the_type_of_a_device_in_mountinfo() {
        let table = "22 1 254:0 / / rw,relatime shared:1 - ext4 /dev/vda rw\n\
                     30 22 0:25 / /tmp rw - tmpfs tmpfs rw\n\
                     41 22 7:0 / /mnt/a rw - ext2 /dev/loop0 rw\n\
                     42 41 7:0 / /mnt/b rw shared:9 master:2 - ext4 /dev/loop0 rw\n";
        assert_eq!(super::mount_type_in(table, "254:0").as_deref(), Some("ext4"));
        assert_eq!(super::mount_type_in(table, "0:25").as_deref(), Some("tmpfs"));
        assert_eq!(super::mount_type_in(table, "7:0").as_deref(), Some("ext4"));
        assert_eq!(super::mount_type_in(table, "8:1"), None);
        assert!(super::mount_type(std::path::Path::new("/")).is_some());
    }
}
