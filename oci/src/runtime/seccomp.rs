//! A RuntimeDefault-style seccomp policy, compiled to BPF in pure Rust (seccompiler).
//!
//! Like Docker's and containerd's default profile for a container without CAP_SYS_ADMIN, it
//! refuses (EPERM) what lets a process escape or reconfigure the host: mounts, namespaces,
//! kernel modules, kexec, keyrings, BPF, perf, clock and swap control, handle-based opens and
//! the like. It is written as a deny list over an allow-by-default filter; `clone3` answers
//! ENOSYS so that libc falls back to `clone`, whose namespace flags are then checked.
//!
//! Arguments are checked where Docker's and containerd's profiles check them: `socket` for
//! AF_VSOCK (not namespaced: it reaches the hypervisor's services on a VM) and AF_ALG (the
//! kernel's crypto API, a recurring source of bugs), as containerd 2.x refuses both;
//! `personality` with anything but the values those profiles allow (0, PER_LINUX32,
//! UNAME26 and their combination, and the 0xffffffff query), so a container cannot, say,
//! turn on READ_IMPLIES_EXEC or ADDR_NO_RANDOMIZE. x32 and 32-bit calls are refused whole.

use std::collections::BTreeMap;

use seccompiler::{
    BpfProgram, SeccompAction, SeccompCmpArgLen, SeccompCmpOp, SeccompCondition, SeccompFilter,
    SeccompRule, TargetArch,
};

/// Syscalls refused outright.
fn denied() -> Vec<i64> {
    let mut v = vec![
        libc::SYS_acct,
        libc::SYS_add_key,
        libc::SYS_bpf,
        libc::SYS_clock_adjtime,
        libc::SYS_clock_settime,
        libc::SYS_delete_module,
        libc::SYS_finit_module,
        libc::SYS_init_module,
        libc::SYS_kcmp,
        libc::SYS_kexec_file_load,
        libc::SYS_kexec_load,
        libc::SYS_keyctl,
        libc::SYS_lookup_dcookie,
        libc::SYS_mbind,
        libc::SYS_move_pages,
        libc::SYS_set_mempolicy,
        libc::SYS_mount,
        libc::SYS_umount2,
        libc::SYS_pivot_root,
        libc::SYS_name_to_handle_at,
        libc::SYS_open_by_handle_at,
        libc::SYS_perf_event_open,
        libc::SYS_process_vm_readv,
        libc::SYS_process_vm_writev,
        libc::SYS_quotactl,
        libc::SYS_reboot,
        libc::SYS_request_key,
        libc::SYS_setns,
        libc::SYS_settimeofday,
        libc::SYS_swapon,
        libc::SYS_swapoff,
        libc::SYS_syslog,
        libc::SYS_unshare,
        libc::SYS_userfaultfd,
        libc::SYS_fsopen,
        libc::SYS_fsconfig,
        libc::SYS_fsmount,
        libc::SYS_fspick,
        libc::SYS_move_mount,
        libc::SYS_open_tree,
        libc::SYS_mount_setattr,
        libc::SYS_io_uring_setup,
        libc::SYS_io_uring_enter,
        libc::SYS_io_uring_register,
    ];
    #[cfg(target_arch = "x86_64")]
    v.extend([
        libc::SYS_nfsservctl,
        libc::SYS_ioperm,
        libc::SYS_iopl,
        libc::SYS_sysfs,
        libc::SYS__sysctl,
        libc::SYS_uselib,
        libc::SYS_ustat,
    ]);
    v
}

const NAMESPACE_FLAGS: &[u64] = &[
    libc::CLONE_NEWNS as u64,
    libc::CLONE_NEWUTS as u64,
    libc::CLONE_NEWIPC as u64,
    libc::CLONE_NEWUSER as u64,
    libc::CLONE_NEWPID as u64,
    libc::CLONE_NEWNET as u64,
    libc::CLONE_NEWCGROUP as u64,
    0x80, // CLONE_NEWTIME
];

/// Socket families refused (containerd's RuntimeDefault refuses the same two).
pub const REFUSED_FAMILIES: &[i32] = &[libc::AF_VSOCK, libc::AF_ALG];

/// The `personality` values Docker's and containerd's profiles allow: PER_LINUX, PER_LINUX32,
/// UNAME26, PER_LINUX32|UNAME26, and 0xffffffff (query the current one).
pub const PERSONALITIES: &[u64] = &[0x0, 0x8, 0x20000, 0x20008, 0xffff_ffff];

/// Refuses x32 system calls (numbers with bit 30 set): they would bypass a filter that names
/// x86_64 numbers, on kernels built with x32 support.
#[cfg(target_arch = "x86_64")]
fn no_x32() -> BpfProgram {
    use seccompiler::sock_filter;
    const BPF_LD_W_ABS: u16 = 0x20;
    const BPF_JGE_K: u16 = 0x35;
    const BPF_RET_K: u16 = 0x06;
    const RET_ALLOW: u32 = 0x7fff_0000;
    const RET_ERRNO: u32 = 0x0005_0000;
    vec![
        sock_filter {
            code: BPF_LD_W_ABS,
            jt: 0,
            jf: 0,
            k: 0,
        }, // seccomp_data.nr
        sock_filter {
            code: BPF_JGE_K,
            jt: 0,
            jf: 1,
            k: 0x4000_0000,
        },
        sock_filter {
            code: BPF_RET_K,
            jt: 0,
            jf: 0,
            k: RET_ERRNO | libc::EPERM as u32,
        },
        sock_filter {
            code: BPF_RET_K,
            jt: 0,
            jf: 0,
            k: RET_ALLOW,
        },
    ]
}

#[derive(Debug, thiserror::Error)]
#[error("seccomp policy: {0}")]
pub struct SeccompError(String);

fn arch() -> Result<TargetArch, SeccompError> {
    TargetArch::try_from(std::env::consts::ARCH).map_err(|e| SeccompError(format!("{e:?}")))
}

/// The BPF programs of the default policy, in the order to install them.
pub fn default_programs() -> Result<Vec<BpfProgram>, SeccompError> {
    let err = |e: seccompiler::BackendError| SeccompError(e.to_string());
    let mut deny: BTreeMap<i64, Vec<SeccompRule>> =
        denied().into_iter().map(|s| (s, vec![])).collect();
    // clone with any namespace flag (flags are argument 0 on x86_64 and arm64).
    let rules = NAMESPACE_FLAGS
        .iter()
        .map(|&f| {
            SeccompCondition::new(0, SeccompCmpArgLen::Qword, SeccompCmpOp::MaskedEq(f), f)
                .and_then(|c| SeccompRule::new(vec![c]))
                .map_err(err)
        })
        .collect::<Result<Vec<_>, _>>()?;
    deny.insert(libc::SYS_clone, rules);
    let dword = |op, v: u64| SeccompCondition::new(0, SeccompCmpArgLen::Dword, op, v).map_err(err);
    // socket(AF_VSOCK or AF_ALG, ...).
    deny.insert(
        libc::SYS_socket,
        REFUSED_FAMILIES
            .iter()
            .map(|&f| {
                dword(SeccompCmpOp::Eq, f as u64)
                    .and_then(|c| SeccompRule::new(vec![c]).map_err(err))
            })
            .collect::<Result<Vec<_>, _>>()?,
    );
    // personality(x) for every x but the allowed ones: one rule, all conditions together.
    let not_allowed = PERSONALITIES
        .iter()
        .map(|&p| dword(SeccompCmpOp::Ne, p))
        .collect::<Result<Vec<_>, _>>()?;
    deny.insert(
        libc::SYS_personality,
        vec![SeccompRule::new(not_allowed).map_err(err)?],
    );
    let deny = SeccompFilter::new(
        deny,
        SeccompAction::Allow,
        SeccompAction::Errno(libc::EPERM as u32),
        arch()?,
    )
    .map_err(err)?;
    let clone3: BTreeMap<i64, Vec<SeccompRule>> =
        [(libc::SYS_clone3, vec![])].into_iter().collect();
    let clone3 = SeccompFilter::new(
        clone3,
        SeccompAction::Allow,
        SeccompAction::Errno(libc::ENOSYS as u32),
        arch()?,
    )
    .map_err(err)?;
    let mut progs = vec![
        deny.try_into().map_err(err)?,
        clone3.try_into().map_err(err)?,
    ];
    #[cfg(target_arch = "x86_64")]
    progs.push(no_x32());
    Ok(progs)
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_policy_compiles() {
        let p = super::default_programs().unwrap();
        assert!(p.len() >= 2);
        assert!(p[0].len() > super::denied().len());
    }

    /// Runs `f` in a forked child under the policy; returns the child's exit code.
    fn under_policy(f: fn() -> i32) -> i32 {
        let progs = super::default_programs().unwrap();
        // SAFETY: the child only makes raw system calls (prctl, seccomp through seccompiler
        // with a program built before the fork, the calls under test) and leaves with _exit.
        unsafe {
            match libc::fork() {
                0 => {
                    libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0);
                    for p in &progs {
                        if seccompiler::apply_filter(p).is_err() {
                            libc::_exit(100);
                        }
                    }
                    libc::_exit(f())
                }
                pid => {
                    let mut st = 0;
                    libc::waitpid(pid, &mut st, 0);
                    libc::WEXITSTATUS(st)
                }
            }
        }
    }

    fn errno() -> i32 {
        std::io::Error::last_os_error().raw_os_error().unwrap_or(0)
    }

    #[test]
    fn vsock_and_alg_sockets_are_refused_others_are_not() {
        // SAFETY: plain socket and close calls on integers.
        let vsock = under_policy(|| unsafe {
            (libc::socket(libc::AF_VSOCK, libc::SOCK_STREAM, 0) < 0 && errno() == libc::EPERM)
                as i32
        });
        assert_eq!(vsock, 1, "socket(AF_VSOCK) must fail with EPERM");
        // SAFETY: plain socket and close calls on integers.
        let alg = under_policy(|| unsafe {
            (libc::socket(libc::AF_ALG, libc::SOCK_SEQPACKET, 0) < 0 && errno() == libc::EPERM)
                as i32
        });
        assert_eq!(alg, 1, "socket(AF_ALG) must fail with EPERM");
        // SAFETY: plain socket and close calls on integers.
        let unix = under_policy(|| unsafe {
            let fd = libc::socket(libc::AF_UNIX, libc::SOCK_STREAM, 0);
            libc::close(fd);
            (fd >= 0) as i32
        });
        assert_eq!(unix, 1, "socket(AF_UNIX) still works");
    }

    #[test]
    fn only_dockers_personality_values_are_allowed() {
        // SAFETY: personality takes an integer.
        let query = under_policy(|| unsafe { (libc::personality(0xffff_ffff) >= 0) as i32 });
        assert_eq!(query, 1, "querying the personality works");
        // SAFETY: personality takes an integer.
        let linux32 = under_policy(|| unsafe { (libc::personality(0x8) >= 0) as i32 });
        assert_eq!(linux32, 1, "PER_LINUX32 is allowed");
        // READ_IMPLIES_EXEC and ADDR_NO_RANDOMIZE are not.
        // SAFETY: plain socket and close calls on integers.
        let rie = under_policy(|| unsafe {
            (libc::personality(0x0400000) < 0 && errno() == libc::EPERM) as i32
        });
        assert_eq!(
            rie, 1,
            "personality(READ_IMPLIES_EXEC) must fail with EPERM"
        );
        // SAFETY: plain socket and close calls on integers.
        let norand = under_policy(|| unsafe {
            (libc::personality(0x0040000) < 0 && errno() == libc::EPERM) as i32
        });
        assert_eq!(
            norand, 1,
            "personality(ADDR_NO_RANDOMIZE) must fail with EPERM"
        );
    }
}
