//! Harness for the end-to-end tests: runs the real `hostprobe` binary (which
//! loads the real probes into the running kernel) against workloads whose
//! syscalls are known, and reads its JSON output.
//!
//! Needs root (or CAP_BPF + CAP_PERFMON); `cargo xtask test` builds
//! everything and runs these with `--test-threads=1`.

use std::{
    io::{BufRead, BufReader, Write},
    path::PathBuf,
    process::{Child, ChildStdin, Command, Stdio},
    sync::mpsc,
    time::{Duration, Instant},
};

use serde_json::Value;

/// The agent binary: `$HOSTPROBE_BIN`, or the one built next to this test.
pub fn hostprobe_bin() -> PathBuf {
    match std::env::var_os("HOSTPROBE_BIN") {
        Some(p) => p.into(),
        None => target_bin("hostprobe"),
    }
}

/// The workload binary (`src/bin/workload.rs`).
pub fn workload_bin() -> PathBuf {
    target_bin("workload")
}

/// A binary of this workspace, from the target directory the running test
/// was built in: target/<profile>/deps/<test> -> target/<profile>/<name>.
fn target_bin(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("current_exe");
    let bin = exe.parent().and_then(|d| d.parent()).expect("target dir").join(name);
    assert!(bin.exists(), "{} is missing: run the tests with `cargo xtask test`", bin.display());
    bin
}

pub fn hostprobe() -> Command {
    Command::new(hostprobe_bin())
}

/// A running `hostprobe run --output json`.
pub struct Agent {
    child: Child,
    lines: mpsc::Receiver<String>,
    stderr: std::sync::Arc<std::sync::Mutex<String>>,
    /// Every report read so far.
    pub reports: Vec<Value>,
}

/// The interval the tests run the agent with.
pub const INTERVAL: &str = "200ms";

impl Agent {
    /// Starts `hostprobe run --output json` with `args` (and `--interval
    /// 200ms` unless they say otherwise) and waits for its first report, so
    /// the probes are attached on return.
    pub fn start(args: &[&str]) -> Agent {
        let mut agent = Agent::spawn(args);
        agent
            .next_report(Duration::from_secs(30))
            .unwrap_or_else(|| panic!("no report from hostprobe within 30 s; stderr:\n{}", agent.stderr()));
        agent
    }

    /// Like [`Agent::start`], but returns as soon as the agent logs that its
    /// probes run, without waiting for a report: for long intervals.
    pub fn start_attached(args: &[&str]) -> Agent {
        let agent = Agent::spawn(args);
        agent.wait_attached();
        agent
    }

    /// Waits (up to 30 s) until the agent logs that its probes run.
    pub fn wait_attached(&self) {
        let end = Instant::now() + Duration::from_secs(30);
        while !self.stderr().contains("running probes") {
            assert!(Instant::now() < end, "hostprobe did not attach within 30 s; stderr:\n{}", self.stderr());
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn spawn(args: &[&str]) -> Agent {
        let mut cmd = hostprobe();
        cmd.args(["run", "--output", "json"]).args(args);
        if !args.contains(&"--interval") {
            cmd.args(["--interval", INTERVAL]);
        }
        Agent::spawn_command(cmd)
    }

    /// Spawns `cmd`, a `hostprobe run` started some other way (through
    /// `unshare` or `setpriv`, its flags in the environment), without waiting.
    pub fn spawn_command(mut cmd: Command) -> Agent {
        let mut child = cmd.stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().expect("spawn hostprobe");
        let (tx, lines) = mpsc::channel();
        let stdout = child.stdout.take().expect("stdout");
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let stderr = std::sync::Arc::new(std::sync::Mutex::new(String::new()));
        let sink = stderr.clone();
        let err = child.stderr.take().expect("stderr");
        std::thread::spawn(move || {
            for line in BufReader::new(err).lines().map_while(Result::ok) {
                sink.lock().unwrap().push_str(&(line + "\n"));
            }
        });
        Agent { child, lines, stderr, reports: Vec::new() }
    }

    pub fn stderr(&self) -> String {
        self.stderr.lock().unwrap().clone()
    }

    /// The next report, parsed, or `None` after `timeout` or at end of output.
    pub fn next_report(&mut self, timeout: Duration) -> Option<Value> {
        let line = self.lines.recv_timeout(timeout).ok()?;
        let v: Value = serde_json::from_str(&line).unwrap_or_else(|e| panic!("bad JSON line {line:?}: {e}"));
        self.reports.push(v.clone());
        Some(v)
    }

    /// Reads reports for `d`.
    pub fn run_for(&mut self, d: Duration) {
        let end = Instant::now() + d;
        while let Some(left) = end.checked_duration_since(Instant::now()) {
            if self.next_report(left).is_none() {
                break;
            }
        }
    }

    /// Stops the agent with SIGTERM (it reports its last interval first) and
    /// returns every report it printed.
    pub fn stop(self) -> Vec<Value> {
        self.stop_logged().0
    }

    /// [`Agent::stop`], also returning everything it logged.
    pub fn stop_logged(mut self) -> (Vec<Value>, String) {
        // SAFETY: signalling our own child.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        while self.next_report(Duration::from_secs(10)).is_some() {}
        let status = self.child.wait().expect("wait hostprobe");
        assert!(status.success(), "hostprobe exited with {status}; stderr:\n{}", self.stderr());
        // The stderr reader has seen the end of the pipe once it is closed.
        std::thread::sleep(Duration::from_millis(50));
        (std::mem::take(&mut self.reports), self.stderr())
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A workload process (see `src/bin/workload.rs`) that waits for `go`.
pub struct Workload {
    child: Child,
    stdin: Option<ChildStdin>,
    stdout: Option<BufReader<std::process::ChildStdout>>,
}

/// The syscalls of one round of `workload fleet`, in the order it makes them.
pub const FLEET_SYSCALLS: [&str; 15] = [
    "getppid",
    "getpid",
    "gettid",
    "getuid",
    "geteuid",
    "getgid",
    "getegid",
    "getpgid",
    "getsid",
    "getpriority",
    "sched_getscheduler",
    "umask",
    "sched_yield",
    "times",
    "nanosleep",
];

impl Workload {
    pub fn spawn(args: &[&str]) -> Workload {
        let mut child = Command::new(target_bin("workload"))
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .expect("spawn workload");
        let stdin = child.stdin.take();
        let stdout = child.stdout.take().map(BufReader::new);
        Workload { child, stdin, stdout }
    }

    /// The next line it prints (for workloads that say when they are ready).
    pub fn line(&mut self) -> String {
        let mut line = String::new();
        self.stdout.as_mut().expect("stdout").read_line(&mut line).expect("read workload output");
        line
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Lets it run and waits for it to finish successfully.
    pub fn run(mut self) -> String {
        self.go();
        self.wait()
    }

    pub fn go(&mut self) {
        let mut stdin = self.stdin.take().expect("go once");
        stdin.write_all(b"go\n").expect("write go");
    }

    /// Waits for it to finish successfully; returns what it printed.
    pub fn wait(mut self) -> String {
        let mut out = String::new();
        if let Some(mut stdout) = self.stdout.take() {
            std::io::Read::read_to_string(&mut stdout, &mut out).expect("read workload output");
        }
        let status = self.child.wait().expect("wait workload");
        assert!(status.success(), "workload failed: {status}");
        out
    }
}

impl Drop for Workload {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Starts the agent with `agent_args`, lets `workload` run to the end, reads
/// reports a little longer (so the last interval with its calls is in), and
/// returns them all.
pub fn measure(workload: Workload, agent_args: &[&str]) -> Vec<Value> {
    let mut agent = Agent::start(agent_args);
    workload.run();
    agent.run_for(Duration::from_millis(600));
    agent.stop()
}

/// The process objects for `pid`, one per report it appears in.
pub fn process_reports(reports: &[Value], pid: u32) -> Vec<&Value> {
    reports
        .iter()
        .flat_map(|r| r["processes"].as_array().into_iter().flatten())
        .filter(|p| p["pid"].as_u64() == Some(u64::from(pid)))
        .collect()
}

/// One syscall's items for `pid` across all reports.
pub fn syscall_items<'a>(reports: &'a [Value], pid: u32, name: &str) -> Vec<&'a Value> {
    process_reports(reports, pid)
        .into_iter()
        .flat_map(|p| p["syscalls"].as_array().into_iter().flatten())
        .filter(|s| s["name"] == name)
        .collect()
}

/// Sum of an integer field over items.
pub fn sum(items: &[&Value], field: &str) -> u64 {
    items.iter().map(|s| s[field].as_u64().unwrap_or_else(|| panic!("{field} in {s}"))).sum()
}

/// The probe status object named `probe` in a report.
pub fn probe_status<'a>(report: &'a Value, probe: &str) -> &'a Value {
    report["probes"]
        .as_array()
        .and_then(|ps| ps.iter().find(|p| p["name"] == probe))
        .unwrap_or_else(|| panic!("no probe {probe} in {report}"))
}

/// `entries` of a probe's map in a report.
pub fn map_entries(report: &Value, probe: &str, map: &str) -> u64 {
    probe_status(report, probe)["maps"]
        .as_array()
        .and_then(|ms| ms.iter().find(|m| m["name"] == map))
        .and_then(|m| m["entries"].as_u64())
        .unwrap_or_else(|| panic!("no entries for map {map} in {report}"))
}

/// A file-backed loop device, detached and deleted on drop (also when a test
/// fails).
pub struct LoopDevice {
    pub path: String,
    backing: PathBuf,
    /// A filesystem mounted for the backing file alone, unmounted on drop.
    mount: Option<PathBuf>,
}

impl LoopDevice {
    /// A new loop device over a sparse file of `mib` MiB (reads of holes
    /// never reach a disk: fast and steady).
    pub fn new(mib: u64) -> LoopDevice {
        let backing = Self::backing_path();
        let f = std::fs::File::create(&backing).expect("create backing file");
        f.set_len(mib << 20).expect("size backing file");
        drop(f);
        Self::attach(backing, &[])
    }

    /// A loop device over a file in memory (`/dev/shm`): its requests
    /// never wait for a real disk, so its latency is the CPU's alone.
    pub fn in_memory(mib: u64) -> LoopDevice {
        let backing = PathBuf::from("/dev/shm").join(format!("hostprobe-test-{}-{}.img", std::process::id(), unique()));
        let f = std::fs::File::create(&backing).expect("create backing file in /dev/shm");
        f.set_len(mib << 20).expect("size backing file");
        drop(f);
        Self::attach(backing, &[])
    }

    /// A loop device that reads its backing file (written out in full, on
    /// the host's disk) with direct I/O: every request reaches the real
    /// disk, with its latency and its parallelism.
    pub fn on_disk(mib: u64) -> LoopDevice {
        use std::io::Write as _;
        let backing = Self::backing_path();
        let mut f = std::fs::File::create(&backing).expect("create backing file");
        let chunk: Vec<u8> = (0..1u32 << 20).map(|i| (i.wrapping_mul(2_654_435_761) >> 24) as u8).collect();
        for _ in 0..mib {
            f.write_all(&chunk).expect("write backing file");
        }
        f.sync_all().expect("sync backing file");
        drop(f);
        Self::attach(backing, &["--direct-io=on"])
    }

    /// A loop device of `mib` MiB over a sparse file on a tmpfs of only
    /// `room_kib` KiB: writes past the room fail in the loop driver
    /// (ENOSPC from the backing store), as block requests that complete
    /// with an error.
    pub fn on_full_tmpfs(mib: u64, room_kib: u64) -> LoopDevice {
        let mount = std::env::temp_dir().join(format!("hostprobe-test-tmpfs-{}-{}", std::process::id(), unique()));
        std::fs::create_dir_all(&mount).unwrap();
        let ok = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={room_kib}k"), "tmpfs"])
            .arg(&mount)
            .status()
            .expect("run mount");
        assert!(ok.success(), "mount a tmpfs at {}", mount.display());
        let backing = mount.join("backing.img");
        std::fs::File::create(&backing).and_then(|f| f.set_len(mib << 20)).expect("sparse backing file");
        let mut dev = Self::attach(backing, &[]);
        dev.mount = Some(mount);
        dev
    }

    fn backing_path() -> PathBuf {
        // /var/tmp: on a real disk (a tmpfs /tmp would refuse direct I/O).
        PathBuf::from("/var/tmp").join(format!("hostprobe-test-{}-{}.img", std::process::id(), unique()))
    }

    fn attach(backing: PathBuf, args: &[&str]) -> LoopDevice {
        let out =
            Command::new("losetup").args(["--find", "--show"]).args(args).arg(&backing).output().expect("run losetup");
        assert!(out.status.success(), "losetup failed: {}", String::from_utf8_lossy(&out.stderr));
        let path = String::from_utf8_lossy(&out.stdout).trim().to_string();
        LoopDevice { path, backing, mount: None }
    }

    /// `loop3` for `/dev/loop3`.
    pub fn name(&self) -> &str {
        self.path.rsplit('/').next().unwrap_or(&self.path)
    }

    /// Writes a queue setting, e.g. `scheduler` or `nr_requests`.
    pub fn set_queue(&self, setting: &str, value: &str) {
        let p = format!("/sys/block/{}/queue/{setting}", self.name());
        std::fs::write(&p, value).unwrap_or_else(|e| panic!("write {value} to {p}: {e}"));
    }

    /// (reads completed, writes completed, flushes completed) from
    /// /proc/diskstats: the kernel's own accounting for this device.
    pub fn diskstats(&self) -> (u64, u64, u64) {
        let s = self.stats();
        (s.reads, s.writes, s.flushes)
    }
}

impl LoopDevice {
    /// `major:minor`, as cgroup limit files want it.
    pub fn numbers(&self) -> String {
        std::fs::read_to_string(format!("/sys/block/{}/dev", self.name())).expect("device numbers").trim().to_string()
    }
}

/// A cgroup v1 blkio group (this host's I/O controller), removed on drop
/// (its tasks moved back to the root).
pub struct BlkioGroup(PathBuf);

impl BlkioGroup {
    /// `hostprobe-test-NAME-<pid>` with `limit_file` (e.g.
    /// `blkio.throttle.write_iops_device`) set to `value`.
    pub fn new(name: &str, limit_file: &str, value: &str) -> BlkioGroup {
        let dir = PathBuf::from("/sys/fs/cgroup/blkio").join(format!("hostprobe-test-{name}-{}", std::process::id()));
        std::fs::create_dir(&dir).expect("create a blkio cgroup (cgroup v1 blkio controller)");
        let g = BlkioGroup(dir);
        std::fs::write(g.0.join(limit_file), value).unwrap_or_else(|e| panic!("{limit_file} {value}: {e}"));
        g
    }

    pub fn add(&self, pid: u32) {
        std::fs::write(self.0.join("cgroup.procs"), pid.to_string()).expect("move into the blkio cgroup");
    }
}

impl Drop for BlkioGroup {
    fn drop(&mut self) {
        if let Ok(procs) = std::fs::read_to_string(self.0.join("cgroup.procs")) {
            for pid in procs.lines() {
                let _ = std::fs::write("/sys/fs/cgroup/blkio/cgroup.procs", pid);
            }
        }
        let _ = std::fs::remove_dir(&self.0);
    }
}

/// A cgroup v2 group under the cgroup2 mount (what `--cgroup` filters on
/// and process groups are named by), removed on drop with its children
/// (their tasks moved back to the root).
pub struct Cgroup2 {
    pub dir: PathBuf,
    root: PathBuf,
}

impl Cgroup2 {
    /// `<cgroup2 mount>/<rel>` (and its parents), made now.
    pub fn new(rel: &str) -> Cgroup2 {
        let root = PathBuf::from(hostprobe::cli::cgroup2_mount().expect("a cgroup2 mount"));
        let dir = root.join(rel);
        std::fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("create cgroup {}: {e}", dir.display()));
        Cgroup2 { dir, root }
    }

    /// The path `--cgroup` takes and `/proc/<pid>/cgroup` shows.
    pub fn path(&self) -> String {
        format!("/{}", self.dir.strip_prefix(&self.root).unwrap().display())
    }

    pub fn add(&self, pid: u32) {
        std::fs::write(self.dir.join("cgroup.procs"), pid.to_string()).expect("move into the cgroup");
    }
}

impl Drop for Cgroup2 {
    fn drop(&mut self) {
        // Children first: the deepest paths are the longest.
        let mut dirs = vec![self.dir.clone()];
        let mut i = 0;
        while i < dirs.len() {
            if let Ok(rd) = std::fs::read_dir(&dirs[i]) {
                dirs.extend(rd.flatten().filter(|e| e.path().is_dir()).map(|e| e.path()));
            }
            i += 1;
        }
        for d in dirs.iter().rev() {
            for pid in std::fs::read_to_string(d.join("cgroup.procs")).unwrap_or_default().lines() {
                let _ = std::fs::write(self.root.join("cgroup.procs"), pid);
            }
            let _ = std::fs::remove_dir(d);
        }
    }
}

impl Drop for LoopDevice {
    fn drop(&mut self) {
        let _ = Command::new("losetup").arg("--detach").arg(&self.path).status();
        let _ = std::fs::remove_file(&self.backing);
        if let Some(m) = &self.mount {
            let _ = Command::new("umount").arg(m).status();
            let _ = std::fs::remove_dir(m);
        }
    }
}

fn unique() -> u64 {
    static N: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    N.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
}

/// A process's `disk` items for one device and operation across reports.
pub fn disk_items<'a>(reports: &'a [Value], pid: u32, device: &str, op: &str) -> Vec<&'a Value> {
    process_reports(reports, pid)
        .into_iter()
        .flat_map(|p| p["disk"].as_array().into_iter().flatten())
        .filter(|d| d["device"] == device && d["op"] == op)
        .collect()
}

/// The device summary items for one device and operation across reports.
pub fn device_items<'a>(reports: &'a [Value], device: &str, op: &str) -> Vec<&'a Value> {
    reports
        .iter()
        .flat_map(|r| r["devices"].as_array().into_iter().flatten())
        .filter(|d| d["device"] == device && d["op"] == op)
        .collect()
}

/// A `hostprobe collector` process.
pub struct Collector {
    child: Child,
    log: std::sync::Arc<std::sync::Mutex<String>>,
    port: u16,
}

/// A loopback port free right now.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

impl Collector {
    /// `hostprobe collector --listen 127.0.0.1:PORT ARGS`, once it listens;
    /// with `--no-auth` added unless `args` bring credentials (a token file
    /// or a client CA): most tests are about something else.
    pub fn start(port: u16, args: &[&str]) -> Collector {
        let credentials = args.iter().any(|a| a.ends_with("token-file") || *a == "--client-ca");
        let mut child = hostprobe()
            .args(["collector", "--listen", &format!("127.0.0.1:{port}")])
            .args(args)
            .args(if credentials { &[][..] } else { &["--no-auth"][..] })
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn collector");
        let log = std::sync::Arc::new(std::sync::Mutex::new(String::new()));
        let sink = log.clone();
        let err = child.stderr.take().unwrap();
        std::thread::spawn(move || {
            for line in BufReader::new(err).lines().map_while(Result::ok) {
                sink.lock().unwrap().push_str(&(line + "\n"));
            }
        });
        let c = Collector { child, log, port };
        c.wait_for("collector listening", Duration::from_secs(20));
        c
    }

    /// Its address, for `--collector` (plaintext).
    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// What it logged so far.
    pub fn log(&self) -> String {
        self.log.lock().unwrap().clone()
    }

    pub fn wait_for(&self, text: &str, limit: Duration) {
        let end = Instant::now() + limit;
        while !self.log().contains(text) {
            assert!(Instant::now() < end, "collector did not log {text:?}; log:\n{}", self.log());
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// SIGTERM, as systemd stops it; whether it exited within `limit`.
    pub fn terminate(&mut self, limit: Duration) -> bool {
        // SAFETY: kill(2) on our own child's pid.
        unsafe { libc::kill(self.child.id() as libc::pid_t, libc::SIGTERM) };
        let end = Instant::now() + limit;
        while Instant::now() < end {
            if !self.alive() {
                return true;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        false
    }

    /// SIGKILL: no goodbye, as in a crash.
    pub fn kill(mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    pub fn alive(&mut self) -> bool {
        self.child.try_wait().unwrap().is_none()
    }
}

impl Drop for Collector {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A temporary directory, removed on drop.
pub struct TempDir(pub PathBuf);

impl TempDir {
    pub fn new(name: &str) -> TempDir {
        let p = std::env::temp_dir().join(format!("hostprobe-test-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&p);
        std::fs::create_dir_all(&p).unwrap();
        TempDir(p)
    }

    pub fn path(&self) -> &str {
        self.0.to_str().unwrap()
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// One device's line of /proc/diskstats: the kernel's own block accounting.
#[derive(Debug, Clone, Copy, Default)]
pub struct DiskStats {
    pub reads: u64,
    pub read_sectors: u64,
    pub read_ms: u64,
    pub writes: u64,
    pub write_sectors: u64,
    pub flushes: u64,
    /// Time the device had I/O in flight (busy), ms.
    pub io_ticks_ms: u64,
}

impl LoopDevice {
    pub fn stats(&self) -> DiskStats {
        let stats = std::fs::read_to_string("/proc/diskstats").expect("read /proc/diskstats");
        let line = stats
            .lines()
            .map(|l| l.split_whitespace().collect::<Vec<_>>())
            .find(|f| f.get(2) == Some(&self.name()))
            .unwrap_or_else(|| panic!("{} not in /proc/diskstats", self.name()));
        let n = |i: usize| line.get(i).and_then(|v| v.parse().ok()).unwrap_or(0);
        DiskStats {
            reads: n(3),
            read_sectors: n(5),
            read_ms: n(6),
            writes: n(7),
            write_sectors: n(9),
            flushes: n(18),
            io_ticks_ms: n(12),
        }
    }
}

impl std::ops::Sub for DiskStats {
    type Output = DiskStats;
    fn sub(self, b: DiskStats) -> DiskStats {
        DiskStats {
            reads: self.reads - b.reads,
            read_sectors: self.read_sectors - b.read_sectors,
            read_ms: self.read_ms - b.read_ms,
            writes: self.writes - b.writes,
            write_sectors: self.write_sectors - b.write_sectors,
            flushes: self.flushes - b.flushes,
            io_ticks_ms: self.io_ticks_ms - b.io_ticks_ms,
        }
    }
}

/// GET over HTTP/1.0 from a loopback port: (status line, body).
pub fn http_get(port: u16, path: &str) -> (String, String) {
    use std::io::Read as _;
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).expect("connect");
    write!(s, "GET {path} HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n").unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    let (head, body) = out.split_once("\r\n\r\n").unwrap_or((&out, ""));
    (head.lines().next().unwrap_or("").to_string(), body.to_string())
}

fn url_encode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'a'..=b'z' | b'A'..=b'Z' | b'0'..=b'9' | b'_' | b'-' | b'.' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// A series' labels, as Prometheus answers them.
pub type Labels = std::collections::BTreeMap<String, String>;

/// A Prometheus server (Debian's) scraping `127.0.0.1:target` every second;
/// killed on drop.
pub struct Prometheus {
    child: Child,
    port: u16,
    dir: PathBuf,
}

impl Prometheus {
    pub fn start(target: u16) -> Prometheus {
        Prometheus::with_rules(target, &[])
    }

    /// Like [`Prometheus::start`], evaluating these rule files every second.
    pub fn with_rules(target: u16, rules: &[&std::path::Path]) -> Prometheus {
        Self::launch(&Self::job(target), rules, false)
    }

    /// One scraping every second with these `scrape_configs` entries (YAML,
    /// indented as list items under `scrape_configs:`).
    pub fn scraping(scrape_configs: &str) -> Prometheus {
        Self::launch(scrape_configs, &[], false)
    }

    /// A remote-write receiver (`--web.enable-remote-write-receiver`,
    /// writes to `/api/v1/write`) that scrapes nothing.
    pub fn receiver() -> Prometheus {
        Self::launch("", &[], true)
    }

    /// A remote-write receiver that also scrapes `127.0.0.1:target` every
    /// second (job `hostprobe`).
    pub fn receiver_scraping(target: u16) -> Prometheus {
        Self::launch(&Self::job(target), &[], true)
    }

    fn job(target: u16) -> String {
        format!("  - job_name: hostprobe\n    static_configs:\n      - targets: ['127.0.0.1:{target}']\n")
    }

    /// Its remote-write URL (with [`Prometheus::receiver`]).
    pub fn write_url(&self) -> String {
        format!("http://127.0.0.1:{}/api/v1/write", self.port)
    }

    fn launch(scrape_configs: &str, rules: &[&std::path::Path], receiver: bool) -> Prometheus {
        let dir = std::env::temp_dir().join(format!("hostprobe-prometheus-{}-{}", std::process::id(), unique()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let config = dir.join("prometheus.yml");
        let rule_files: String = rules.iter().map(|r| format!("  - {}\n", r.display())).collect();
        let rule_files = if rules.is_empty() { String::new() } else { format!("rule_files:\n{rule_files}") };
        std::fs::write(
            &config,
            format!(
                "global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\n  evaluation_interval: 1s\n{rule_files}\
                 scrape_configs:{}",
                if scrape_configs.is_empty() { " []\n".to_string() } else { format!("\n{scrape_configs}") }
            ),
        )
        .unwrap();
        let port = free_port();
        let child = Command::new("prometheus")
            .arg(format!("--config.file={}", config.display()))
            .arg(format!("--storage.tsdb.path={}", dir.join("data").display()))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .arg("--log.level=warn")
            .args(receiver.then_some("--web.enable-remote-write-receiver"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("prometheus (cargo xtask setup installs Debian's prometheus)");
        let p = Prometheus { child, port, dir };
        let end = Instant::now() + Duration::from_secs(30);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err()
            || !http_get(port, "/-/ready").0.contains("200")
        {
            assert!(Instant::now() < end, "prometheus did not become ready");
            std::thread::sleep(Duration::from_millis(200));
        }
        p
    }

    /// How many series an instant PromQL query returns; `Err` with what
    /// Prometheus said when it refuses the query.
    pub fn series(&self, promql: &str) -> Result<usize, String> {
        let (_, body) = http_get(self.port, &format!("/api/v1/query?query={}", url_encode(promql)));
        let v: Value = serde_json::from_str(&body).map_err(|e| format!("{e}: {body}"))?;
        if v["status"] != "success" {
            return Err(body);
        }
        Ok(v["data"]["result"].as_array().map_or(0, Vec::len))
    }

    /// The alerts it holds now (`/api/v1/alerts`): each with `labels`,
    /// `annotations` and `state` (pending or firing).
    pub fn alerts(&self) -> Vec<Value> {
        let (_, body) = http_get(self.port, "/api/v1/alerts");
        let v: Value = serde_json::from_str(&body).unwrap_or_else(|e| panic!("bad alerts answer ({e}): {body}"));
        v["data"]["alerts"].as_array().cloned().unwrap_or_default()
    }

    /// The value of an instant PromQL query with one result, if any.
    pub fn query(&self, promql: &str) -> Option<f64> {
        let (_, body) = http_get(self.port, &format!("/api/v1/query?query={}", url_encode(promql)));
        let v: Value = serde_json::from_str(&body).ok()?;
        v["data"]["result"][0]["value"][1].as_str()?.parse().ok()
    }

    /// Every series of an instant PromQL query: its labels (`__name__`
    /// among them) and value as Prometheus writes it; `Err` with what
    /// Prometheus said when it refuses the query.
    pub fn vector(&self, promql: &str) -> Result<Vec<(Labels, String)>, String> {
        let (_, body) = http_get(self.port, &format!("/api/v1/query?query={}", url_encode(promql)));
        let v: Value = serde_json::from_str(&body).map_err(|e| format!("{e}: {body}"))?;
        if v["status"] != "success" {
            return Err(body);
        }
        let series = v["data"]["result"].as_array().cloned().unwrap_or_default();
        Ok(series
            .iter()
            .map(|s| {
                let labels = s["metric"]
                    .as_object()
                    .map(|m| m.iter().map(|(k, v)| (k.clone(), v.as_str().unwrap_or_default().to_string())).collect())
                    .unwrap_or_default();
                (labels, s["value"][1].as_str().unwrap_or_default().to_string())
            })
            .collect())
    }

    /// Requests its HTTP server answered on `handler` (e.g. `/api/v1/write`)
    /// with status `code`, by its own count (`prometheus_http_requests_total`).
    pub fn http_requests(&self, handler: &str, code: u16) -> u64 {
        let (_, body) = http_get(self.port, "/metrics");
        let series = format!("prometheus_http_requests_total{{code=\"{code}\",handler=\"{handler}\"}} ");
        body.lines().find_map(|l| l.strip_prefix(&series)?.parse().ok()).unwrap_or(0)
    }

    /// Queries `promql` until it returns `want` or 30 s pass, calling
    /// `between` (e.g. letting the agent run) before each try; the last
    /// value.
    pub fn query_until(&self, promql: &str, want: f64, mut between: impl FnMut()) -> Option<f64> {
        let end = Instant::now() + Duration::from_secs(30);
        let mut got = None;
        while Instant::now() < end && got != Some(want) {
            between();
            got = self.query(promql);
        }
        got
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// `promtool check metrics` must find nothing wrong with `body`.
pub fn promtool_check(body: &str) {
    let mut p = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("promtool (Debian's prometheus package)");
    p.stdin.take().unwrap().write_all(body.as_bytes()).unwrap();
    let out = p.wait_with_output().unwrap();
    let said = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success() && said.trim().is_empty(), "promtool check metrics: {said}");
}

/// The Python OTLP/gRPC receiver (`otlp_receiver.py`, on the official
/// generated classes; `cargo xtask setup` makes its environment), writing
/// every request it accepts as a JSON line.
pub struct OtlpReceiver {
    child: Child,
    port: u16,
    out: PathBuf,
}

impl OtlpReceiver {
    /// Starts one that answers UNAVAILABLE for its first `unavailable_s` seconds.
    pub fn start(name: &str, unavailable_s: f64) -> OtlpReceiver {
        let home = std::env::var_os("HOME").unwrap_or_else(|| "/root".into());
        let python = PathBuf::from(home).join(".cache/hostprobe/otlp-venv/bin/python");
        assert!(python.exists(), "{} is missing: run `cargo xtask setup`", python.display());
        let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("otlp_receiver.py");
        let port = free_port();
        let out = std::env::temp_dir().join(format!("hostprobe-otlp-{name}-{}.jsonl", std::process::id()));
        let _ = std::fs::remove_file(&out);
        let mut child = Command::new(python)
            .arg(script)
            .args(["--port", &port.to_string(), "--out", out.to_str().unwrap()])
            .args(["--unavailable", &unavailable_s.to_string()])
            .stdout(Stdio::piped())
            .spawn()
            .expect("start the OTLP receiver");
        let mut line = String::new();
        BufReader::new(child.stdout.as_mut().unwrap()).read_line(&mut line).unwrap();
        assert_eq!(line.trim(), "listening");
        OtlpReceiver { child, port, out }
    }

    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// Every request received, in order.
    pub fn requests(&self) -> Vec<Value> {
        std::fs::read_to_string(&self.out)
            .unwrap_or_default()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect()
    }

    /// How many exports it refused (while unavailable).
    pub fn refused(&self) -> u64 {
        std::fs::read_to_string(self.out.with_extension("jsonl.refused"))
            .ok()
            .and_then(|s| s.trim().parse().ok())
            .unwrap_or(0)
    }
}

impl Drop for OtlpReceiver {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_file(&self.out);
        let _ = std::fs::remove_file(self.out.with_extension("jsonl.refused"));
    }
}

/// The value of attribute `key` in an OTLP attribute list (protobuf JSON).
pub fn otlp_attr<'a>(attrs: &'a Value, key: &str) -> Option<&'a Value> {
    attrs.as_array()?.iter().find(|a| a["key"] == key).map(|a| &a["value"])
}

/// The string attribute `key` of an OTLP data point.
pub fn otlp_str<'a>(point: &'a Value, key: &str) -> Option<&'a str> {
    otlp_attr(&point["attributes"], key)?["stringValue"].as_str()
}

/// The data points of metric `name` in one OTLP request, with their
/// temporality; each point's attributes followed by its resource's (as an
/// OpenTelemetry Collector's `resource_to_telemetry_conversion` flattens
/// them), so a test reads process and container attributes off the point.
pub fn otlp_points(request: &Value, name: &str) -> Vec<(Value, String)> {
    let mut out = Vec::new();
    for rm in request["resourceMetrics"].as_array().into_iter().flatten() {
        let resource = rm["resource"]["attributes"].as_array().cloned().unwrap_or_default();
        for sm in rm["scopeMetrics"].as_array().into_iter().flatten() {
            for m in sm["metrics"].as_array().into_iter().flatten().filter(|m| m["name"] == name) {
                for kind in ["sum", "histogram", "gauge"] {
                    let t = m[kind]["aggregationTemporality"].as_str().unwrap_or("").to_string();
                    for p in m[kind]["dataPoints"].as_array().into_iter().flatten() {
                        let mut p = p.clone();
                        let mut attrs = p["attributes"].as_array().cloned().unwrap_or_default();
                        attrs.extend(resource.iter().cloned());
                        p["attributes"] = Value::Array(attrs);
                        out.push((p, t.clone()));
                    }
                }
            }
        }
    }
    out
}

/// An integer in protobuf JSON (64-bit integers are strings there).
pub fn otlp_num(v: &Value) -> u64 {
    v.as_str().and_then(|s| s.parse().ok()).or_else(|| v.as_u64()).unwrap_or(0)
}

/// A BPF map of the running kernel, read with the `bpf(2)` syscall directly:
/// what a probe's map holds, seen without the agent.
pub struct KernelMap {
    pub id: u32,
    pub key_size: u32,
    fd: std::os::fd::OwnedFd,
}

/// `bpf(2)` with a zero-padded attribute block.
fn bpf_cmd(cmd: libc::c_long, attr: &mut [u64; 16]) -> i64 {
    // SAFETY: the attribute block is larger than any layout used here and
    // the kernel reads and writes only within it (and the buffers it names).
    unsafe { libc::syscall(libc::SYS_bpf, cmd, attr.as_mut_ptr(), std::mem::size_of_val(attr)) }
}

impl KernelMap {
    /// Every map of the running kernel named `name` (as the kernel keeps
    /// it: at most 15 bytes), in order of creation.
    pub fn named(name: &str) -> Vec<KernelMap> {
        use std::os::fd::FromRawFd;
        const GET_NEXT_ID: libc::c_long = 12;
        const GET_FD_BY_ID: libc::c_long = 14;
        const GET_INFO_BY_FD: libc::c_long = 15;
        let mut out = Vec::new();
        let mut id = 0u32;
        loop {
            let mut attr = [0u64; 16];
            attr[0] = u64::from(id);
            if bpf_cmd(GET_NEXT_ID, &mut attr) < 0 {
                break;
            }
            id = (attr[0] >> 32) as u32;
            let mut attr = [0u64; 16];
            attr[0] = u64::from(id);
            let fd = bpf_cmd(GET_FD_BY_ID, &mut attr);
            if fd < 0 {
                continue; // gone meanwhile
            }
            // SAFETY: a descriptor the kernel just gave us.
            let fd = unsafe { std::os::fd::OwnedFd::from_raw_fd(fd as i32) };
            // struct bpf_map_info: type, id, key_size, value_size,
            // max_entries, map_flags (u32 each), name[16], ...
            let mut info = [0u8; 80];
            let mut attr = [0u64; 16];
            attr[0] = std::os::fd::AsRawFd::as_raw_fd(&fd) as u64 | ((info.len() as u64) << 32);
            attr[1] = info.as_mut_ptr() as u64;
            if bpf_cmd(GET_INFO_BY_FD, &mut attr) < 0 {
                continue;
            }
            let key_size = u32::from_ne_bytes(info[8..12].try_into().unwrap());
            let end = info[24..40].iter().position(|b| *b == 0).unwrap_or(16);
            if &info[24..24 + end] == name.as_bytes() {
                out.push(KernelMap { id, key_size, fd });
            }
        }
        out
    }

    /// Every key in the map now.
    pub fn keys(&self) -> Vec<Vec<u8>> {
        const GET_NEXT_KEY: libc::c_long = 4;
        let mut keys: Vec<Vec<u8>> = Vec::new();
        loop {
            let mut next = vec![0u8; self.key_size as usize];
            let mut attr = [0u64; 16];
            attr[0] = std::os::fd::AsRawFd::as_raw_fd(&self.fd) as u64;
            attr[1] = keys.last().map_or(0, |k| k.as_ptr() as u64);
            attr[2] = next.as_mut_ptr() as u64;
            if bpf_cmd(GET_NEXT_KEY, &mut attr) < 0 || keys.len() > 200_000 {
                return keys;
            }
            keys.push(next);
        }
    }

    /// Whether the map holds the u32 key `k` (a thread or process id).
    pub fn has_u32(&self, k: u32) -> bool {
        self.keys().iter().any(|key| key.len() == 4 && key[..] == k.to_ne_bytes())
    }
}

/// Whether `pid` is a kernel thread (PF_KTHREAD in /proc/<pid>/stat's
/// flags); `None` once it is gone.
pub fn is_kernel_thread(pid: u32) -> Option<bool> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the comm (which may hold spaces): state is field 3, flags field 9.
    let rest = &stat[stat.rfind(')')? + 2..];
    let flags: u64 = rest.split_whitespace().nth(6)?.parse().ok()?;
    Some(flags & 0x0020_0000 != 0)
}

/// Two namespaces joined by a veth pair, IPv4 10.231.0.{1,2}/24 and IPv6
/// fd00:231::{1,2}/64; deleted on drop.
pub struct NetPair {
    pub a: String,
    pub b: String,
}

pub fn ip(args: &[&str]) {
    let out = Command::new("ip").args(args).output().expect("run ip (iproute2)");
    assert!(out.status.success(), "ip {args:?}: {}", String::from_utf8_lossy(&out.stderr));
}

impl NetPair {
    /// Makes the namespaces (a side effect, so no `Default`).
    #[allow(clippy::new_without_default)]
    pub fn new() -> NetPair {
        let id = std::process::id() % 100_000;
        let (a, b) = (format!("hpa{id}"), format!("hpb{id}"));
        let pair = NetPair { a: a.clone(), b: b.clone() };
        ip(&["netns", "add", &a]);
        ip(&["netns", "add", &b]);
        ip(&["link", "add", "va", "netns", &a, "type", "veth", "peer", "name", "vb", "netns", &b]);
        for (ns, dev, v4, v6) in
            [(&a, "va", "10.231.0.1/24", "fd00:231::1/64"), (&b, "vb", "10.231.0.2/24", "fd00:231::2/64")]
        {
            ip(&["-n", ns, "addr", "add", v4, "dev", dev]);
            ip(&["-n", ns, "-6", "addr", "add", v6, "dev", dev, "nodad"]);
            ip(&["-n", ns, "link", "set", dev, "up"]);
            ip(&["-n", ns, "link", "set", "lo", "up"]);
        }
        pair
    }

    /// The workload with `args`, inside namespace `ns` (`ip netns exec`
    /// execs it: the child's pid is the workload's).
    pub fn spawn(&self, ns: &str, args: &[&str]) -> Child {
        Command::new("ip")
            .args(["netns", "exec", ns])
            .arg(workload_bin())
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .expect("spawn in namespace")
    }

    /// Runs a command inside namespace `ns`; returns its stdout.
    pub fn run(&self, ns: &str, cmd: &[&str]) -> String {
        let out = Command::new("ip").args(["netns", "exec", ns]).args(cmd).output().expect("ip netns exec");
        assert!(out.status.success(), "{cmd:?}: {}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8_lossy(&out.stdout).into_owned()
    }
}

impl Drop for NetPair {
    fn drop(&mut self) {
        for ns in [&self.a, &self.b] {
            let _ = Command::new("ip").args(["netns", "del", ns]).status();
        }
    }
}

/// The kernel's own trace of a loop device's block I/O: an ftrace instance
/// of its own (no BPF) recording `block_bio_queue` and `block_rq_complete`
/// for the device, stamped with the clock BPF programs read
/// (`CLOCK_MONOTONIC`, ftrace's `mono`). Truth for per-request latency.
pub struct BlockTrace {
    dir: PathBuf,
}

impl BlockTrace {
    const EVENTS: [&'static str; 2] = ["block_bio_queue", "block_rq_complete"];

    /// Starts tracing `dev` (tracefs must be mounted: an attached agent
    /// mounts it).
    pub fn start(dev: &LoopDevice) -> BlockTrace {
        let numbers = std::fs::read_to_string(format!("/sys/block/{}/dev", dev.name())).expect("device number");
        let (major, minor) = numbers.trim().split_once(':').expect("major:minor");
        let (major, minor): (u32, u32) = (major.parse().unwrap(), minor.parse().unwrap());
        let dir = PathBuf::from("/sys/kernel/tracing/instances").join(format!(
            "hostprobe-test-{}-{}",
            std::process::id(),
            unique()
        ));
        std::fs::create_dir(&dir).unwrap_or_else(|e| panic!("create ftrace instance {}: {e}", dir.display()));
        let trace = BlockTrace { dir };
        trace.write("trace_clock", "mono");
        // 32 MiB a CPU: a few seconds of fio at 20k IOPS, without overruns.
        trace.write("buffer_size_kb", "32768");
        // The kernel's dev_t: major << 20 | minor.
        let filter = format!("dev == {}", major << 20 | minor);
        for e in Self::EVENTS {
            trace.write(&format!("events/block/{e}/filter"), &filter);
            trace.write(&format!("events/block/{e}/enable"), "1");
        }
        trace
    }

    fn write(&self, file: &str, value: &str) {
        let p = self.dir.join(file);
        std::fs::write(&p, value).unwrap_or_else(|e| panic!("write {value} to {}: {e}", p.display()));
    }

    /// Stops tracing and returns each request's time from its bio's
    /// submission to its completion, in ns (paired by start sector; at most
    /// one request per sector may be in flight).
    pub fn latencies(self) -> Vec<u64> {
        for e in Self::EVENTS {
            self.write(&format!("events/block/{e}/enable"), "0");
        }
        for cpu in std::fs::read_dir(self.dir.join("per_cpu")).expect("per_cpu").flatten() {
            let stats = std::fs::read_to_string(cpu.path().join("stats")).expect("per-CPU trace stats");
            assert!(stats.contains("overrun: 0\n"), "the trace lost events: {stats}");
        }
        let text = std::fs::read_to_string(self.dir.join("trace")).expect("read trace");
        let mut queued = std::collections::HashMap::new();
        let mut latencies = Vec::new();
        for line in text.lines().filter(|l| !l.starts_with('#')) {
            // `fio-123 [001] ..... 4321.123456: block_bio_queue: 7,3 R 2048 + 8 [fio]`
            // `<idle>-0 [000] ..s1. 4321.123499: block_rq_complete: 7,3 R () 2048 + 8 none,0,0 [0]`
            let Some((head, rest)) = line.split_once(": block_") else { continue };
            let stamp = head.rsplit(' ').next().expect("timestamp");
            let (s, us) = stamp.split_once('.').expect("secs.usecs");
            let ns = s.parse::<u64>().unwrap() * 1_000_000_000 + us.parse::<u64>().unwrap() * 1_000;
            let words: Vec<&str> = rest.split_whitespace().collect();
            let plus = words.iter().position(|w| *w == "+").expect("sector + count");
            let sector: u64 = words[plus - 1].parse().expect("sector");
            if rest.starts_with("bio_queue:") {
                queued.insert(sector, ns);
            } else if let Some(t) = queued.remove(&sector) {
                latencies.push(ns - t);
            }
        }
        latencies.sort_unstable();
        latencies
    }
}

impl Drop for BlockTrace {
    fn drop(&mut self) {
        for e in Self::EVENTS {
            let _ = std::fs::write(self.dir.join(format!("events/block/{e}/enable")), "0");
        }
        let _ = std::fs::remove_dir(&self.dir);
    }
}

/// The nearest-rank `q` quantile of sorted values.
pub fn exact_quantile(sorted: &[u64], q: f64) -> u64 {
    let rank = ((q * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len());
    sorted[rank - 1]
}

/// A tmux server of its own (its own socket, no config) with one session
/// running a shell whose prompt is [`Tmux::PROMPT`]: a real terminal to
/// drive `hostprobe top` in, with keys in and the screen out.
pub struct Tmux {
    socket: String,
}

impl Tmux {
    pub const PROMPT: &'static str = "hostprobe-test$ ";

    /// A `cols` x `rows` terminal with the shell at its prompt.
    pub fn new(cols: u16, rows: u16) -> Tmux {
        let t = Tmux { socket: format!("hostprobe-test-{}-{}", std::process::id(), unique()) };
        let path = std::env::var("PATH").unwrap_or_default();
        let shell = format!("env -i PATH={path} TERM=screen PS1='{}' bash --norc --noprofile", Tmux::PROMPT);
        t.tmux(&["new-session", "-d", "-x", &cols.to_string(), "-y", &rows.to_string(), "-s", "t", &shell]);
        t.wait_for("the shell's prompt", Duration::from_secs(10), |s| s.contains(Tmux::PROMPT.trim_end()));
        t
    }

    fn tmux(&self, args: &[&str]) -> String {
        let out =
            Command::new("tmux").args(["-L", &self.socket, "-f", "/dev/null"]).args(args).output().expect("run tmux");
        assert!(out.status.success(), "tmux {args:?}: {}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Types `text` as it is, then Enter.
    pub fn type_line(&self, text: &str) {
        self.tmux(&["send-keys", "-t", "t", "-l", text]);
        self.tmux(&["send-keys", "-t", "t", "Enter"]);
    }

    /// Sends keys by tmux's names (`q`, `Enter`, `Escape`, `C-c`, `/`).
    pub fn keys(&self, keys: &[&str]) {
        let mut args = vec!["send-keys", "-t", "t"];
        args.extend(keys);
        self.tmux(&args);
    }

    /// What the terminal shows now, one string per row.
    pub fn screen(&self) -> String {
        self.tmux(&["capture-pane", "-p", "-t", "t"])
    }

    /// A tmux format for the pane, e.g. `#{alternate_on}`.
    pub fn pane(&self, format: &str) -> String {
        self.tmux(&["display-message", "-p", "-t", "t", format]).trim().to_string()
    }

    pub fn resize(&self, cols: u16, rows: u16) {
        self.tmux(&["resize-window", "-t", "t", "-x", &cols.to_string(), "-y", &rows.to_string()]);
    }

    /// Polls the screen until `ok` says yes of a screen that stays the
    /// same for 50 ms (not one caught half drawn); panics with the last
    /// screen after `timeout`.
    pub fn wait_for(&self, what: &str, timeout: Duration, ok: impl Fn(&str) -> bool) -> String {
        let end = Instant::now() + timeout;
        loop {
            let s = self.screen();
            if ok(&s) {
                std::thread::sleep(Duration::from_millis(50));
                if self.screen() == s {
                    return s;
                }
                continue;
            }
            assert!(Instant::now() < end, "no {what} within {timeout:?}; the screen:\n{s}");
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Pids of the shell's children (what it runs now).
    pub fn shell_children(&self) -> Vec<u32> {
        let shell = self.pane("#{pane_pid}");
        std::fs::read_to_string(format!("/proc/{shell}/task/{shell}/children"))
            .unwrap_or_default()
            .split_whitespace()
            .filter_map(|p| p.parse().ok())
            .collect()
    }
}

impl Drop for Tmux {
    fn drop(&mut self) {
        let _ = Command::new("tmux").args(["-L", &self.socket, "kill-server"]).output();
    }
}

/// PEM files of a test PKI: a CA, a server certificate for 127.0.0.1, a
/// client certificate from the CA, and one from a CA nobody trusts.
pub struct Pki {
    dir: TempDir,
}

impl Default for Pki {
    fn default() -> Self {
        Self::new()
    }
}

impl Pki {
    pub fn new() -> Pki {
        use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair};
        let dir = TempDir::new(&format!("pki-{}", unique()));
        let write = |name: &str, pem: String| std::fs::write(dir.0.join(name), pem).unwrap();
        let ca = |cn: &str| {
            let key = KeyPair::generate().unwrap();
            let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
            params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
            params.distinguished_name.push(DnType::CommonName, cn);
            let cert = params.self_signed(&key).unwrap();
            (cert.pem(), Issuer::new(params, key))
        };
        let leaf = |names: Vec<String>, issuer: &Issuer<'_, KeyPair>, prefix: &str| {
            let key = KeyPair::generate().unwrap();
            let cert = CertificateParams::new(names).unwrap().signed_by(&key, issuer).unwrap();
            write(&format!("{prefix}.pem"), cert.pem());
            write(&format!("{prefix}.key"), key.serialize_pem());
        };
        let (ca_pem, issuer) = ca("hostprobe test CA");
        write("ca.pem", ca_pem);
        leaf(vec!["127.0.0.1".into(), "localhost".into()], &issuer, "server");
        leaf(vec!["agent".into()], &issuer, "client");
        let (_, rogue) = ca("someone else's CA");
        leaf(vec!["agent".into()], &rogue, "rogue");
        write("token", "s3cret-token\n".into());
        write("wrong-token", "not-the-token\n".into());
        Pki { dir }
    }

    pub fn file(&self, name: &str) -> String {
        self.dir.0.join(name).to_str().unwrap().to_string()
    }
}

/// A codec that sends bytes as they are: for messages no honest client
/// would send.
#[derive(Clone, Default)]
pub struct Raw;

impl tonic::codec::Codec for Raw {
    type Encode = Vec<u8>;
    type Decode = Vec<u8>;
    type Encoder = Raw;
    type Decoder = Raw;
    fn encoder(&mut self) -> Raw {
        Raw
    }
    fn decoder(&mut self) -> Raw {
        Raw
    }
}

impl tonic::codec::Encoder for Raw {
    type Item = Vec<u8>;
    type Error = tonic::Status;
    fn encode(&mut self, item: Vec<u8>, dst: &mut tonic::codec::EncodeBuf<'_>) -> Result<(), tonic::Status> {
        bytes::BufMut::put_slice(dst, &item);
        Ok(())
    }
}

impl tonic::codec::Decoder for Raw {
    type Item = Vec<u8>;
    type Error = tonic::Status;
    fn decode(&mut self, src: &mut tonic::codec::DecodeBuf<'_>) -> Result<Option<Vec<u8>>, tonic::Status> {
        let v = bytes::Buf::chunk(src).to_vec();
        bytes::Buf::advance(src, v.len());
        Ok(Some(v))
    }
}

/// A report of agent and host `agent` in which a process named `comm`
/// made `count` getppid calls (each in the latency bucket of 1 us),
/// ending `age` ago.
pub fn counted_report(agent: &str, seq: u64, comm: &str, count: u64, age: Duration) -> hostprobe::wire::pb::Report {
    use hostprobe::wire::pb;
    let mut report = synthetic_report(
        agent,
        seq,
        vec![pb::Process {
            pid: 4242,
            comm: comm.into(),
            merged: 1,
            syscalls: vec![pb::SyscallStats {
                name: "getppid".into(),
                nr: 110,
                count,
                total_ns: count * 1_000,
                latency: Some(pb::Histogram {
                    layout: 1,
                    bucket: vec![57],
                    count: vec![count],
                    max_ns: 1_000,
                    sum_ns: Some(count * 1_000),
                }),
                ..Default::default()
            }],
            ..Default::default()
        }],
    );
    if let Some(a) = report.agent.as_mut() {
        a.host_name = agent.into();
    }
    let age = age.as_nanos() as i64;
    report.interval_start_unix_ns -= age;
    report.interval_end_unix_ns -= age;
    report
}

/// Streams `reports` to the collector at `url` (plaintext, no token) on
/// one stream: how many were acknowledged, and the status that ended the
/// stream early, if one did.
pub fn send_reports(url: &str, reports: Vec<hostprobe::wire::pb::Report>) -> (usize, Option<String>) {
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    rt.block_on(async {
        let channel = tonic::transport::Endpoint::from_shared(url.to_string()).unwrap().connect().await.unwrap();
        let mut client = hostprobe::wire::pb::collector_client::CollectorClient::new(channel);
        let n = reports.len();
        let mut acks = client.stream(tokio_stream::iter(reports)).await.unwrap().into_inner();
        let mut acked = 0;
        while acked < n {
            match acks.message().await {
                Ok(Some(_)) => acked += 1,
                Ok(None) => break,
                Err(s) => return (acked, Some(format!("{s:?}"))),
            }
        }
        (acked, None)
    })
}

/// A report as an agent sends it: agent `agent` (epoch 1), sequence `seq`,
/// the second that ended now, and `processes`.
pub fn synthetic_report(
    agent: &str,
    seq: u64,
    processes: Vec<hostprobe::wire::pb::Process>,
) -> hostprobe::wire::pb::Report {
    use hostprobe::wire::pb;
    let now = hostprobe::metrics::now_unix_ns();
    pb::Report {
        agent: Some(pb::AgentIdentity { agent_id: agent.into(), epoch: 1, ..Default::default() }),
        sequence: seq,
        interval_start_unix_ns: now - 1_000_000_000,
        interval_end_unix_ns: now,
        processes,
        ..Default::default()
    }
}

/// Sends `messages` on one Stream call; the status the collector ends it with.
///
/// `token`, if given, goes as the bearer token. A stream the collector
/// accepts whole ends with `Code::Ok`.
pub async fn hostile_stream(url: &str, token: Option<&str>, messages: Vec<Vec<u8>>) -> tonic::Status {
    let channel = match tonic::transport::Endpoint::from_shared(url.to_string()).unwrap().connect().await {
        Ok(c) => c,
        Err(e) => return tonic::Status::unavailable(e.to_string()),
    };
    let mut grpc = tonic::client::Grpc::new(channel);
    if let Err(e) = grpc.ready().await {
        return tonic::Status::unavailable(e.to_string());
    }
    let path = tonic::codegen::http::uri::PathAndQuery::from_static("/hostprobe.v1.Collector/Stream");
    let mut request = tonic::Request::new(tokio_stream::iter(messages));
    if let Some(t) = token {
        request.metadata_mut().insert("authorization", format!("Bearer {t}").parse().unwrap());
    }
    let response = match grpc.streaming(request, path, Raw).await {
        Ok(r) => r,
        Err(s) => return s,
    };
    let mut acks = response.into_inner();
    loop {
        match acks.message().await {
            Ok(Some(_)) => continue,
            Ok(None) => return tonic::Status::new(tonic::Code::Ok, "the collector accepted the whole stream"),
            Err(s) => return s,
        }
    }
}
