//! Start-up probe: is io_uring usable here, with the operations the data path needs? And so,
//! which driver the workers run ([`choose`]).
//!
//! With `[tuning] driver = "auto"` (the default) a kernel or a seccomp profile that refuses
//! io_uring makes the workers use epoll, with one log line that says why. With `"io_uring"` it
//! makes ringlb refuse to start, with one line that names the cause and the fix, instead of
//! failing later in a worker.

use io_uring::{opcode, IoUring, Probe};

use super::DriverKind;
use crate::config::DriverChoice;

/// The driver `choice` comes to on this kernel, and, when `auto` fell back to epoll, why.
pub fn choose(choice: DriverChoice) -> Result<(DriverKind, Option<String>), ProbeError> {
    match choice {
        DriverChoice::IoUring => check().map(|()| (DriverKind::IoUring, None)),
        DriverChoice::Epoll => Ok((DriverKind::Epoll, None)),
        DriverChoice::Auto => match check() {
            Ok(()) => Ok((DriverKind::IoUring, None)),
            Err(ProbeError(why)) => Ok((DriverKind::Epoll, Some(why))),
        },
    }
}

#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct ProbeError(pub String);

/// Oldest kernel with everything used: multishot accept, provided-buffer rings, recv poll-first.
const MIN_KERNEL: (u32, u32) = (6, 0);

/// Checks the running kernel; the error says what is missing and how to fix it.
pub fn check() -> Result<(), ProbeError> {
    let ring = IoUring::new(8).map_err(|e| ProbeError(setup_failure(e)))?;
    let mut probe = Probe::new();
    ring.submitter()
        .register_probe(&mut probe)
        .map_err(|e| ProbeError(format!("io_uring: cannot probe supported operations: {e}")))?;
    let needed = [
        (opcode::AcceptMulti::CODE, "ACCEPT"),
        (opcode::Connect::CODE, "CONNECT"),
        (opcode::LinkTimeout::CODE, "LINK_TIMEOUT"),
        (opcode::Recv::CODE, "RECV"),
        (opcode::Send::CODE, "SEND"),
        (opcode::Splice::CODE, "SPLICE"),
        (opcode::PollAdd::CODE, "POLL_ADD"),
        (opcode::Timeout::CODE, "TIMEOUT"),
    ];
    let missing: Vec<&str> = needed
        .iter()
        .filter(|(code, _)| !probe.is_supported(*code))
        .map(|(_, name)| *name)
        .collect();
    if !missing.is_empty() {
        return Err(ProbeError(format!(
            "io_uring on this kernel lacks {}: ringlb needs Linux {}.{} or newer",
            missing.join(", "),
            MIN_KERNEL.0,
            MIN_KERNEL.1
        )));
    }
    if let Some((release, version)) = kernel_version() {
        if version < MIN_KERNEL {
            return Err(ProbeError(format!(
                "kernel {release} is too old: ringlb needs Linux {}.{} or newer \
                 (multishot accept, provided-buffer rings)",
                MIN_KERNEL.0, MIN_KERNEL.1
            )));
        }
    }
    Ok(())
}

/// Explains why `io_uring_setup` failed.
fn setup_failure(error: std::io::Error) -> String {
    let disabled = std::fs::read_to_string("/proc/sys/kernel/io_uring_disabled")
        .ok()
        .and_then(|s| s.trim().parse::<u32>().ok());
    match (error.raw_os_error(), disabled) {
        (Some(libc::EPERM), Some(level)) if level > 0 => format!(
            "io_uring is disabled by sysctl kernel.io_uring_disabled={level}: \
             run `sysctl -w kernel.io_uring_disabled=0` (or 1 with ringlb's group in \
             kernel.io_uring_group)"
        ),
        (Some(libc::EPERM), _) => "io_uring_setup was refused (EPERM), most likely by a seccomp profile: \
             allow io_uring_setup, io_uring_enter and io_uring_register for ringlb \
             (containers: a seccomp profile that permits them)"
            .to_string(),
        (Some(libc::ENOSYS), _) => "io_uring is not available (ENOSYS): the kernel lacks CONFIG_IO_URING \
             or a seccomp profile hides it; ringlb needs Linux 6.0 or newer with io_uring"
            .to_string(),
        (Some(libc::ENOMEM), _) => "io_uring_setup failed with ENOMEM: raise the locked-memory limit \
             (ulimit -l, LimitMEMLOCK=) or use Linux 5.12 or newer"
            .to_string(),
        _ => format!("io_uring_setup failed: {error}"),
    }
}

/// The running kernel's release string and (major, minor).
fn kernel_version() -> Option<(String, (u32, u32))> {
    let release = std::fs::read_to_string("/proc/sys/kernel/osrelease").ok()?;
    let release = release.trim().to_string();
    let mut parts = release.split(|c: char| !c.is_ascii_digit());
    let major = parts.next()?.parse().ok()?;
    let minor = parts.next()?.parse().ok()?;
    Some((release, (major, minor)))
}

#[cfg(test)]
mod tests {
    #[test]
    fn this_kernel_passes_the_probe() {
        super::check().expect("the build machine runs a kernel with io_uring");
    }

    #[test]
    fn kernel_version_is_read() {
        let (_, (major, _)) = super::kernel_version().expect("osrelease readable");
        assert!(major >= 3);
    }
}
