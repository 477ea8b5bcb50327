//! One flow's smoltcp socket and the memory of its buffers.
//!
//! The receive and send buffers of a flow live in one anonymous mapping of their own. The
//! kernel gives a page of it memory only when the page is first written, so a connection that
//! exchanged a few bytes costs a page or two per buffer, not the full window. Once a flow is
//! quiet (both buffers empty, nothing held out of order) [`FlowSocket::release_pages`] hands
//! the pages back (`MADV_DONTNEED`): an idle connection costs no buffer memory at all,
//! however much it moved before. The window is still the full buffer, so a connection that
//! wakes up gets its full speed at once; only the pages it touches are faulted in again.

use std::ptr::NonNull;

use smoltcp::iface::{SocketHandle, SocketSet};
use smoltcp::socket::tcp;

/// The TCP socket of one flow, in a socket set of its own, with its buffer memory.
pub(super) struct FlowSocket {
    // Field order matters: `sockets` borrows `memory`'s pages and is dropped first.
    sockets: SocketSet<'static>,
    handle: SocketHandle,
    memory: BufferMemory,
}

impl FlowSocket {
    /// A socket with receive and send buffers of `buffer` bytes each; `None` when the memory
    /// cannot be mapped (the flow is then refused).
    pub(super) fn new(buffer: usize) -> Option<FlowSocket> {
        let memory = BufferMemory::map(buffer)?;
        let (rx, tx) = memory.halves(buffer);
        let socket = tcp::Socket::new(tcp::SocketBuffer::new(rx), tcp::SocketBuffer::new(tx));
        let mut sockets = SocketSet::new(Vec::with_capacity(1));
        let handle = sockets.add(socket);
        Some(FlowSocket {
            sockets,
            handle,
            memory,
        })
    }

    /// The socket.
    pub(super) fn get(&self) -> &tcp::Socket<'static> {
        self.sockets.get::<tcp::Socket>(self.handle)
    }

    /// The socket, to change.
    pub(super) fn get_mut(&mut self) -> &mut tcp::Socket<'static> {
        self.sockets.get_mut::<tcp::Socket>(self.handle)
    }

    /// The socket set, for the interface to poll.
    pub(super) fn set_mut(&mut self) -> &mut SocketSet<'static> {
        &mut self.sockets
    }

    /// The socket set, to ask the interface when it next needs a poll.
    pub(super) fn set(&self) -> &SocketSet<'static> {
        &self.sockets
    }

    /// Pages of the buffers that hold memory now (tests).
    #[cfg(test)]
    pub(super) fn resident_pages(&self) -> usize {
        self.memory.resident_pages()
    }

    /// Gives the buffers' pages back to the kernel if both buffers are empty; returns whether
    /// it did. The caller must know that the receive buffer holds no out-of-order segment
    /// (smoltcp keeps those beyond the data it counts, and does not say).
    pub(super) fn release_pages(&mut self) -> bool {
        let socket = self.get();
        if socket.recv_queue() != 0 || socket.send_queue() != 0 {
            return false;
        }
        self.memory.release();
        true
    }
}

/// An anonymous private mapping holding two buffers, each starting on a page boundary.
struct BufferMemory {
    start: NonNull<u8>,
    len: usize,
    /// Offset of the second buffer.
    second: usize,
}

// SAFETY: the mapping is owned memory like a `Box<[u8]>`; nothing in it is tied to a thread.
unsafe impl Send for BufferMemory {}

impl BufferMemory {
    /// Maps room for two buffers of `each` bytes; `None` if the kernel refuses.
    fn map(each: usize) -> Option<BufferMemory> {
        let page = page_size();
        let second = each.max(1).checked_next_multiple_of(page)?;
        let len = second.checked_mul(2)?;
        // SAFETY: a fresh anonymous private mapping at an address the kernel chooses; the
        // result is checked below.
        let ptr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE,
                -1,
                0,
            )
        };
        if ptr == libc::MAP_FAILED {
            return None;
        }
        let start = NonNull::new(ptr.cast::<u8>())?;
        Some(BufferMemory { start, len, second })
    }

    /// The two buffers, `each` bytes long.
    ///
    /// They are handed out as `'static` because smoltcp's socket set cannot borrow from a
    /// sibling field; [`FlowSocket`] drops the sockets holding them before this memory, and
    /// calls this once.
    fn halves(&self, each: usize) -> (&'static mut [u8], &'static mut [u8]) {
        let each = each.min(self.second);
        // SAFETY: both ranges lie inside the mapping (`second >= each`, `len == 2 * second`),
        // do not overlap, are zero-filled (readable and writable), and outlive their users:
        // see above.
        unsafe {
            let first = std::slice::from_raw_parts_mut(self.start.as_ptr(), each);
            let second = std::slice::from_raw_parts_mut(self.start.as_ptr().add(self.second), each);
            (first, second)
        }
    }

    /// Pages of the mapping that hold memory now (mincore).
    #[cfg(test)]
    fn resident_pages(&self) -> usize {
        let page = page_size();
        let mut vec = vec![0u8; self.len / page];
        // SAFETY: the range is the mapping; `vec` has one byte per page.
        let rc = unsafe { libc::mincore(self.start.as_ptr().cast(), self.len, vec.as_mut_ptr()) };
        assert_eq!(rc, 0, "mincore");
        vec.iter().filter(|b| *b & 1 == 1).count()
    }

    /// Frees the pages (they read as zeros afterwards, and cost memory again once written).
    fn release(&mut self) {
        // SAFETY: the whole range is this mapping. The buffers' contents are not needed: the
        // caller checked that both are empty, so smoltcp reads none of these bytes before
        // writing them again.
        unsafe {
            libc::madvise(self.start.as_ptr().cast(), self.len, libc::MADV_DONTNEED);
        }
    }
}

impl Drop for BufferMemory {
    fn drop(&mut self) {
        // SAFETY: the mapping made in `map`, unmapped once; its users were dropped first.
        unsafe {
            libc::munmap(self.start.as_ptr().cast(), self.len);
        }
    }
}

fn page_size() -> usize {
    // SAFETY: sysconf has no preconditions.
    let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    usize::try_from(page)
        .ok()
        .filter(|p| *p > 0)
        .unwrap_or(4096)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buffers_cost_only_pages_written_and_none_once_released() {
        let mut flow = FlowSocket::new(128 * 1024).unwrap();
        assert_eq!(flow.get().recv_capacity(), 128 * 1024);
        assert_eq!(flow.get().send_capacity(), 128 * 1024);
        assert_eq!(flow.resident_pages(), 0);
        // One byte written in each buffer: one page each.
        let base = flow.memory.start.as_ptr();
        // SAFETY: offsets inside the mapping; smoltcp is not using these bytes.
        unsafe {
            *base = 1;
            *base.add(flow.memory.second + 5000) = 1;
        }
        assert_eq!(flow.resident_pages(), 2);
        assert!(flow.release_pages());
        assert_eq!(flow.resident_pages(), 0);
        // SAFETY: as above.
        assert_eq!(unsafe { *base }, 0);
    }

    #[test]
    fn odd_sizes_get_page_aligned_halves() {
        let flow = FlowSocket::new(1000).unwrap();
        assert_eq!(flow.get().recv_capacity(), 1000);
        assert_eq!(flow.memory.second % page_size(), 0);
        assert!(flow.memory.second >= 1000);
    }
}
