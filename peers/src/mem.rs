//! Memory figures of a process, from `/proc/<pid>/status`.

/// A `/proc/<pid>/status` field in kB, as bytes (0 if unreadable).
pub fn status_bytes(pid: u32, field: &str) -> usize {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<usize>().ok())
        .map_or(0, |kb| kb * 1024)
}

/// This process's resident set now.
pub fn rss() -> usize {
    status_bytes(std::process::id(), "VmRSS")
}

/// This process's peak resident set.
pub fn peak() -> usize {
    status_bytes(std::process::id(), "VmHWM")
}

/// Hands freed heap pages back to the kernel (glibc `malloc_trim`), so
/// that what was freed after loading (the input text, the generator's
/// lists) does not count as the engine's.
pub fn trim() {
    // SAFETY: malloc_trim only walks glibc's own free lists.
    unsafe {
        libc::malloc_trim(0);
    }
}

/// Caps this process's address space, so that an engine that cannot hold
/// a scale fails with an allocation error instead of pushing the machine
/// (shared with others) into swap or the OOM killer.
pub fn limit_address_space(bytes: u64) {
    let limit = libc::rlimit {
        rlim_cur: bytes as libc::rlim_t,
        rlim_max: bytes as libc::rlim_t,
    };
    // SAFETY: setrlimit with a valid struct; lowering our own limit.
    let rc = unsafe { libc::setrlimit(libc::RLIMIT_AS, &limit) };
    assert_eq!(rc, 0, "setrlimit(RLIMIT_AS) failed");
}

pub fn mb(bytes: usize) -> f64 {
    bytes as f64 / 1_048_576.0
}

/// The machine's memory, in GB (`MemTotal`).
pub fn status_total_gb() -> f64 {
    let info = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
    info.lines()
        .find_map(|l| l.strip_prefix("MemTotal:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
        .map_or(0.0, |kb| kb / 1024.0 / 1024.0)
}

/// User and system CPU seconds of a process, or of one thread when `tid`
/// is given, from `/proc/<pid>[/task/<tid>]/stat`.
pub fn cpu_split(pid: u32, tid: Option<u32>) -> (f64, f64) {
    let path = match tid {
        Some(t) => format!("/proc/{pid}/task/{t}/stat"),
        None => format!("/proc/{pid}/stat"),
    };
    let stat = std::fs::read_to_string(path).unwrap_or_default();
    // Fields after the parenthesised command name; utime and stime are
    // fields 14 and 15 of the whole line.
    let rest = stat.rsplit_once(')').map_or("", |(_, r)| r);
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| f.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    (ticks(11) / hz, ticks(12) / hz)
}

/// The threads of this process whose name is `name`.
pub fn threads_named(name: &str) -> Vec<u32> {
    let Ok(dir) = std::fs::read_dir("/proc/self/task") else {
        return Vec::new();
    };
    dir.filter_map(|e| {
        let e = e.ok()?;
        let comm = std::fs::read_to_string(e.path().join("comm")).ok()?;
        (comm.trim() == name)
            .then(|| e.file_name().to_str()?.parse().ok())
            .flatten()
    })
    .collect()
}
