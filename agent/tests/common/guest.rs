//! QEMU test guests for the agent's tests, on top of `tests/guest/` (see its README): build an
//! initramfs holding the files and binaries a test chooses, boot it with Debian's stock kernel
//! (KVM when it works, else TCG) and read the serial console by section.
//!
//! ```ignore
//! let mut g = Guest::new("my-test");
//! g.text("/test.sh", "#!/bin/bash\n. /usr/lib/steward-guest/lib.sh\nsection hello uname -r\n")
//!     .bin(env!("CARGO_BIN_EXE_steward-agent"), "/usr/bin/steward-agent");
//! let Some(boot) = g.boot() else { return }; // skipped (outside CI only)
//! assert_eq!(boot.get("hello").rc, 0);
//! ```
//!
//! A missing component (kernel, QEMU, busybox, iproute2 that could not be installed) fails the
//! test in CI (`CI` set) and skips it loudly elsewhere.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::Value;

/// The `tests/guest/` directory of the repository.
pub fn harness_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../tests/guest")
}

/// `target/guest/`: the initramfs cache and serial logs (next to the test executables).
pub fn cache_dir() -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    // target/<profile>/deps/<test> -> target/guest
    exe.ancestors().nth(3).unwrap().join("guest")
}

/// Written straight to stderr, so it shows even when libtest captures the test's output.
pub fn say(msg: &str) {
    let _ = writeln!(std::io::stderr(), "{msg}");
}

/// A component is missing: panics in CI, otherwise says SKIPPED loudly. Returns `None`.
pub fn missing<T>(what: &str) -> Option<T> {
    if std::env::var_os("CI").is_some() {
        panic!("guest test component missing: {what}; .ci/run (scripts/deps.sh) must install it");
    }
    say(&format!(
        "SKIPPED: guest test component missing: {what}. Run scripts/deps.sh as root; this test FAILS in CI"
    ));
    None
}

/// What goes into one guest's initramfs.
pub struct Guest {
    name: String,
    args: Vec<String>,
    tmp: tempfile::TempDir,
    count: usize,
}

impl Guest {
    /// `name` names the serial log, `target/guest/logs/<name>.log`.
    pub fn new(name: &str) -> Guest {
        Guest {
            name: name.to_string(),
            args: Vec::new(),
            tmp: tempfile::tempdir().unwrap(),
            count: 0,
        }
    }

    /// Copies the file `src` to `dest` in the guest (`/test.sh` is the script /init runs).
    pub fn file(&mut self, src: impl AsRef<Path>, dest: &str) -> &mut Self {
        let src = src.as_ref();
        assert!(src.is_file(), "{}: no such file", src.display());
        assert!(
            !src.to_string_lossy().contains(':'),
            "{}: the harness cannot take a path with ':'",
            src.display()
        );
        self.args.push(format!("{}:{dest}", src.display()));
        self
    }

    /// Puts `contents` at `dest` in the guest.
    pub fn text(&mut self, dest: &str, contents: &str) -> &mut Self {
        self.count += 1;
        let name = Path::new(dest).file_name().unwrap().to_string_lossy();
        let p = self.tmp.path().join(format!("{}-{name}", self.count));
        std::fs::write(&p, contents).unwrap();
        self.file(p, dest)
    }

    /// Copies an executable with its shared libraries to `dest` in the guest.
    pub fn bin(&mut self, src: impl AsRef<Path>, dest: &str) -> &mut Self {
        self.args.push("--bin".into());
        self.args.push(format!("{}:{dest}", src.as_ref().display()));
        self
    }

    /// Adds a kernel module (and its dependencies) to the ones always loaded.
    pub fn module(&mut self, name: &str) -> &mut Self {
        self.args.push("--module".into());
        self.args.push(name.into());
        self
    }

    /// Builds (or reuses) the initramfs; `None` when skipped for a missing component.
    pub fn build(&self) -> Option<Image> {
        // Tests of one binary build at the same time; guests with the same inputs share one
        // cache entry, which two concurrent builds would race to create.
        static BUILD: std::sync::Mutex<()> = std::sync::Mutex::new(());
        let _one_at_a_time = BUILD.lock().unwrap_or_else(|p| p.into_inner());
        let out = Command::new("bash")
            .arg(harness_dir().join("build-initramfs.sh"))
            .arg(cache_dir())
            .args(&self.args)
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        match out.status.code() {
            Some(0) => {}
            Some(3) => return missing(stderr.trim()),
            _ => panic!("tests/guest/build-initramfs.sh failed: {stderr}"),
        }
        let vars = key_values(&String::from_utf8_lossy(&out.stdout));
        let get = |k: &str| {
            vars.iter()
                .find(|(key, _)| key == k)
                .map(|(_, v)| v.clone())
                .unwrap_or_else(|| panic!("build-initramfs.sh printed no {k}: {stderr}"))
        };
        Some(Image {
            name: self.name.clone(),
            kernel: PathBuf::from(get("KERNEL")),
            initramfs: PathBuf::from(get("INITRAMFS")),
            kernel_version: get("KERNEL_VERSION"),
        })
    }

    /// Builds and boots; `None` when skipped for a missing component.
    pub fn boot(&self) -> Option<Boot> {
        self.build()?.boot()
    }
}

fn key_values(s: &str) -> Vec<(String, String)> {
    s.lines()
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
        .collect()
}

/// A built initramfs and the kernel to boot it with.
pub struct Image {
    pub name: String,
    pub kernel: PathBuf,
    pub initramfs: PathBuf,
    pub kernel_version: String,
}

impl Image {
    /// Boots the guest until it powers off (hard limit: 300 s). Tries KVM, falls back to TCG.
    pub fn boot(&self) -> Option<Boot> {
        let log_path = cache_dir().join("logs").join(format!("{}.log", self.name));
        let out = Command::new("bash")
            .arg(harness_dir().join("run-guest.sh"))
            .arg("--log")
            .arg(&log_path)
            .arg(&self.initramfs)
            .arg(&self.kernel)
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr).to_string();
        if out.status.code() == Some(3) {
            return missing(stderr.trim());
        }
        let vars = key_values(&String::from_utf8_lossy(&out.stdout));
        let get = |k: &str| {
            vars.iter()
                .find(|(key, _)| key == k)
                .map(|(_, v)| v.clone())
        };
        let raw = std::fs::read(&log_path).unwrap_or_default();
        let log = String::from_utf8_lossy(&raw).replace('\r', "");
        let boot = Boot {
            accel: get("ACCEL").unwrap_or_else(|| "none".into()),
            kvm_fallback: get("KVM_FALLBACK"),
            result: get("RESULT").unwrap_or_else(|| "none".into()),
            elapsed_ms: get("ELAPSED_MS").and_then(|v| v.parse().ok()).unwrap_or(0),
            log_path,
            log,
        };
        say(&format!(
            "guest {}: accelerator {} ({}), kernel {}, {} ms, result {}, serial log {}",
            self.name,
            boot.accel.to_uppercase(),
            boot.kvm_fallback
                .as_deref()
                .map(|w| format!("KVM not used: {w}"))
                .unwrap_or_else(|| "first choice".into()),
            self.kernel_version,
            boot.elapsed_ms,
            boot.result,
            boot.log_path.display()
        ));
        assert!(
            boot.log.contains("STEWARD-GUEST-BEGIN"),
            "the guest never reached /init ({stderr}); serial log:\n{}",
            boot.tail(60)
        );
        assert!(
            boot.log.contains("STEWARD-GUEST-MODULES ok"),
            "loading kernel modules failed in the guest:\n{}",
            boot.tail(60)
        );
        assert!(
            boot.result == "ok",
            "the guest's /test.sh did not finish (result {}, {stderr}); serial log:\n{}",
            boot.result,
            boot.tail(80)
        );
        Some(boot)
    }
}

/// One section of the serial log (`section`/`capture` in tests/guest/lib.sh).
#[derive(Debug, Clone)]
pub struct Section {
    pub name: String,
    pub text: String,
    pub rc: i32,
}

/// A finished guest run.
pub struct Boot {
    /// `kvm` or `tcg`.
    pub accel: String,
    /// Why KVM was not used, when it was tried.
    pub kvm_fallback: Option<String>,
    /// `ok`, `fail` or `none` (from `STEWARD-GUEST-RESULT`).
    pub result: String,
    pub elapsed_ms: u64,
    pub log_path: PathBuf,
    /// The serial log, carriage returns removed.
    pub log: String,
}

impl Boot {
    /// The section `name`, if the guest printed it (the first one of that name).
    pub fn section(&self, name: &str) -> Option<Section> {
        let begin = format!("STEWARD-SECTION-BEGIN {name}");
        let end = format!("STEWARD-SECTION-END {name} rc=");
        let mut text = String::new();
        let mut inside = false;
        for line in self.log.lines() {
            if !inside {
                // A marker may follow terminal escapes on the same line: search, don't anchor.
                if line.find(&begin).is_some_and(|i| line[i..] == begin) {
                    inside = true;
                }
                continue;
            }
            if let Some(i) = line.find(&end) {
                text.push_str(&line[..i]);
                let rc = line[i + end.len()..].trim().parse().unwrap_or(-1);
                return Some(Section {
                    name: name.to_string(),
                    text,
                    rc,
                });
            }
            text.push_str(line);
            text.push('\n');
        }
        None
    }

    /// The section `name`; panics with the log's tail when the guest did not print it.
    pub fn get(&self, name: &str) -> Section {
        self.section(name).unwrap_or_else(|| {
            panic!(
                "section {name} is not in the serial log {}:\n{}",
                self.log_path.display(),
                self.tail(60)
            )
        })
    }

    /// The section `name` parsed as JSON.
    pub fn json(&self, name: &str) -> Value {
        let s = self.get(name);
        serde_json::from_str(s.text.trim())
            .unwrap_or_else(|e| panic!("section {name} is not JSON ({e}):\n{}", s.text))
    }

    /// The last `n` lines of the serial log.
    pub fn tail(&self, n: usize) -> String {
        let lines: Vec<&str> = self.log.lines().collect();
        lines[lines.len().saturating_sub(n)..].join("\n")
    }
}

/// Removes ANSI escape sequences (colours in logs).
pub fn strip_ansi(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut chars = s.chars().peekable();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            if chars.peek() == Some(&'[') {
                chars.next();
                for c in chars.by_ref() {
                    if c.is_ascii_alphabetic() {
                        break;
                    }
                }
            }
            continue;
        }
        out.push(c);
    }
    out
}
