//! The one place with `unsafe`: filling a freshly created, not yet published BPF array through mmap.
//!
//! Writing a Maglev table with one `bpf_map_update_elem` per entry costs ~16k syscalls per table; an mmapable array
//! (`BPF_F_MMAPABLE`) is filled with plain stores instead.
#![allow(unsafe_code, reason = "mmap of a BPF array map; each block states its invariants")]

use std::os::fd::{AsRawFd, BorrowedFd};

/// Writes `values` into the first `values.len()` elements of an mmapable `u32` array map of at least that many
/// entries.
pub fn fill_u32_array(fd: BorrowedFd<'_>, values: &[u32]) -> std::io::Result<()> {
    if values.is_empty() {
        return Ok(());
    }
    // SAFETY: sysconf has no preconditions.
    let page = usize::try_from(unsafe { libc::sysconf(libc::_SC_PAGESIZE) }).unwrap_or(4096).max(1);
    let bytes = std::mem::size_of_val(values);
    let len = bytes.div_ceil(page) * page;
    // SAFETY: a shared, writable mapping of the map's value area; the kernel checks that `len` does not exceed the
    // array's (page-rounded) size and fails the call otherwise. No Rust reference aliases the mapping.
    let ptr = unsafe {
        libc::mmap(std::ptr::null_mut(), len, libc::PROT_READ | libc::PROT_WRITE, libc::MAP_SHARED, fd.as_raw_fd(), 0)
    };
    if ptr == libc::MAP_FAILED {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: `ptr` is a valid mapping of `len >= bytes` bytes, page aligned (so aligned for u32), and `values` is a
    // separate allocation.
    unsafe { std::ptr::copy_nonoverlapping(values.as_ptr(), ptr.cast::<u32>(), values.len()) };
    // SAFETY: unmapping exactly the mapping created above.
    if unsafe { libc::munmap(ptr, len) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}
