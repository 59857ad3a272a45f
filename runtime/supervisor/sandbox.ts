/**
 * What the worker process gives up once it serves (OpenSSH's privilege separation is the model): the
 * worker parses untrusted bytes (origin bodies, decompression, manifests, handshakes), so a bug there
 * should not become a way to run a program, trace or write into another process, load kernel code or
 * change identity. `PR_SET_NO_NEW_PRIVS`, then a seccomp filter that makes these calls fail with EPERM
 * in every thread. EPERM rather than a kill: a call this list forgot to allow shows up as an error in
 * the log, not as a dead worker (and every restore it served waiting for the next one).
 *
 * The worker still needs what serving takes: ioctl on userfaultfds, pidfd_send_signal to fail a peer
 * closed, sockets, files, threads, mmap; none of that is here. Only x86_64's numbers are listed; on
 * other architectures the filter is skipped and the worker says so.
 */
import { addon } from '../../native/addon.js';

/** x86_64 system call numbers (arch/x86/entry/syscalls/syscall_64.tbl). */
export const X86_64_DENIED: Readonly<Record<string, number>> = {
  execve: 59,
  execveat: 322,
  ptrace: 101,
  process_vm_readv: 310,
  process_vm_writev: 311,
  setuid: 105,
  setgid: 106,
  setreuid: 113,
  setregid: 114,
  setgroups: 116,
  setresuid: 117,
  setresgid: 119,
  capset: 126,
  personality: 135,
  pivot_root: 155,
  chroot: 161,
  acct: 163,
  settimeofday: 164,
  mount: 165,
  umount2: 166,
  swapon: 167,
  swapoff: 168,
  reboot: 169,
  iopl: 172,
  ioperm: 173,
  init_module: 175,
  delete_module: 176,
  clock_settime: 227,
  kexec_load: 246,
  add_key: 248,
  request_key: 249,
  keyctl: 250,
  unshare: 272,
  perf_event_open: 298,
  name_to_handle_at: 303,
  open_by_handle_at: 304,
  setns: 308,
  finit_module: 313,
  kexec_file_load: 320,
  bpf: 321,
  open_tree: 428,
  move_mount: 429,
  fsopen: 430,
  fsmount: 432,
};

const EPERM = 1;

/** The calls denied on this architecture, by name; empty where none are listed. */
export function deniedSyscalls(arch: string = process.arch): string[] {
  return arch === 'x64' ? Object.keys(X86_64_DENIED) : [];
}

/**
 * Installs the filter (NO_NEW_PRIVS must be set). Returns what was done, for the log: the number of
 * calls denied, or why nothing was.
 */
export function confineWorker(): { denied: number } | { skipped: string } {
  if (process.arch !== 'x64') return { skipped: `no system call list for ${process.arch}` };
  try {
    addon().seccompDeny(Object.values(X86_64_DENIED), EPERM);
    return { denied: Object.keys(X86_64_DENIED).length };
  } catch (e) {
    return { skipped: (e as Error).message };
  }
}
