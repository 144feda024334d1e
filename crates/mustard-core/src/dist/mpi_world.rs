//! [`Collective`] over MPI (rsmpi): the processes `mpirun` or `srun` started.

use std::sync::Mutex;
use std::time::Instant;

use mpi::collective::SystemOperation;
use mpi::datatype::PartitionMut;
use mpi::environment::Threading;
use mpi::topology::SimpleCommunicator;
use mpi::traits::*;
use mpi::Count;

use super::{Collective, Traffic};
use crate::{Error, Result};

pub(crate) use mpi::environment::Universe;

/// MPI's world communicator, its collectives serialised by a lock.
pub struct Mpi {
    comm: Mutex<SimpleCommunicator>,
    rank: usize,
    size: usize,
    local_rank: usize,
    local_size: usize,
    traffic: Mutex<Traffic>,
}

// SAFETY: MPI was initialised with `MPI_THREAD_MULTIPLE` or `MPI_THREAD_SERIALIZED` (checked in
// `start`), so its calls may come from any thread as long as they do not overlap, and every
// call goes through `comm`'s lock.
unsafe impl Send for Mpi {}
// SAFETY: as for `Send`: all access to the communicator is behind the lock.
unsafe impl Sync for Mpi {}

/// Initialises MPI and returns the universe (MPI ends when it is dropped) and the world.
pub(crate) fn start() -> Result<(Universe, Mpi)> {
    let (universe, threading) =
        mpi::initialize_with_threading(Threading::Multiple).ok_or_else(|| Error::Collective {
            op: "MPI initialisation",
            processes: 0,
            reason: "MPI was already initialised".into(),
        })?;
    if threading < Threading::Serialized {
        return Err(Error::Collective {
            op: "MPI initialisation",
            processes: 0,
            reason: format!(
                "this MPI library gives thread level {threading:?}; mustard needs Serialized or Multiple"
            ),
        });
    }
    let world = universe.world();
    let (rank, size) = (world.rank() as usize, world.size() as usize);
    let node = world.split_shared(world.rank());
    let (local_rank, local_size) = (node.rank() as usize, node.size() as usize);
    Ok((
        universe,
        Mpi {
            comm: Mutex::new(world),
            rank,
            size,
            local_rank,
            local_size,
            traffic: Mutex::default(),
        },
    ))
}

impl Mpi {
    /// The processes of this machine.
    pub fn local_size(&self) -> usize {
        self.local_size
    }

    fn comm(&self) -> std::sync::MutexGuard<'_, SimpleCommunicator> {
        self.comm.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn count(&self, bytes: usize, started: Instant) {
        let mut t = self.traffic.lock().unwrap_or_else(|e| e.into_inner());
        t.calls += 1;
        t.bytes += bytes as u64;
        t.seconds += started.elapsed().as_secs_f64();
    }

    fn all_reduce<T: Equivalence + Copy>(&self, values: &mut [T]) {
        let started = Instant::now();
        let comm = self.comm();
        // MPI counts are 32-bit: large buffers go in pieces.
        for chunk in values.chunks_mut(1 << 30) {
            let send = chunk.to_vec();
            comm.all_reduce_into(&send[..], chunk, SystemOperation::sum());
        }
        drop(comm);
        self.count(size_of_val(values), started);
    }

    fn displacements(counts: &[Count]) -> Vec<Count> {
        counts
            .iter()
            .scan(0, |acc, &c| {
                let d = *acc;
                *acc += c;
                Some(d)
            })
            .collect()
    }

    fn split(all: &[u8], counts: &[Count], displs: &[Count]) -> Vec<Vec<u8>> {
        counts
            .iter()
            .zip(displs)
            .map(|(&c, &d)| all[d as usize..(d + c) as usize].to_vec())
            .collect()
    }

    /// A zeroed buffer of `len` bytes whose pointer is a real allocation even when empty: an
    /// empty `Vec`'s dangling pointer is 0x1, which Open MPI reads as `MPI_IN_PLACE`.
    fn buffer(len: usize) -> Vec<u8> {
        let mut v = Vec::with_capacity(len.max(1));
        v.resize(len, 0);
        v
    }

    /// `bytes` copied into a [`Mpi::buffer`].
    fn sendable(bytes: &[u8]) -> Vec<u8> {
        let mut v = Self::buffer(0);
        v.extend_from_slice(bytes);
        v
    }

    fn length(&self, op: &'static str, bytes: usize) -> Result<Count> {
        Count::try_from(bytes).map_err(|_| Error::Collective {
            op,
            processes: self.size,
            reason: format!("{bytes} bytes are more than one message holds"),
        })
    }
}

impl Collective for Mpi {
    fn rank(&self) -> usize {
        self.rank
    }

    fn size(&self) -> usize {
        self.size
    }

    fn local_rank(&self) -> usize {
        self.local_rank
    }

    fn all_reduce_f64(&self, values: &mut [f64]) -> Result<()> {
        self.all_reduce(values);
        Ok(())
    }

    fn all_reduce_f32(&self, values: &mut [f32]) -> Result<()> {
        self.all_reduce(values);
        Ok(())
    }

    fn broadcast(&self, root: usize, bytes: &mut Vec<u8>) -> Result<()> {
        let comm = self.comm();
        let process = comm.process_at_rank(root as i32);
        let mut len = bytes.len() as u64;
        process.broadcast_into(&mut len);
        bytes.resize(len as usize, 0);
        for chunk in bytes.chunks_mut(1 << 30) {
            process.broadcast_into(chunk);
        }
        Ok(())
    }

    fn gather(&self, root: usize, bytes: &[u8]) -> Result<Vec<Vec<u8>>> {
        let len = self.length("gather", bytes.len())?;
        let bytes = &Self::sendable(bytes)[..];
        let comm = self.comm();
        let process = comm.process_at_rank(root as i32);
        if self.rank != root {
            process.gather_into(&len);
            process.gather_varcount_into(bytes);
            return Ok(Vec::new());
        }
        let mut counts = vec![0 as Count; self.size];
        process.gather_into_root(&len, &mut counts[..]);
        let displs = Self::displacements(&counts);
        let mut all = Self::buffer(counts.iter().sum::<Count>() as usize);
        {
            let mut part = PartitionMut::new(&mut all[..], &counts[..], &displs[..]);
            process.gather_varcount_into_root(bytes, &mut part);
        }
        Ok(Self::split(&all, &counts, &displs))
    }

    fn all_gather(&self, bytes: &[u8]) -> Result<Vec<Vec<u8>>> {
        let len = self.length("all-gather", bytes.len())?;
        let bytes = &Self::sendable(bytes)[..];
        let comm = self.comm();
        let mut counts = vec![0 as Count; self.size];
        comm.all_gather_into(&len, &mut counts[..]);
        let displs = Self::displacements(&counts);
        let mut all = Self::buffer(counts.iter().sum::<Count>() as usize);
        {
            let mut part = PartitionMut::new(&mut all[..], &counts[..], &displs[..]);
            comm.all_gather_varcount_into(bytes, &mut part);
        }
        Ok(Self::split(&all, &counts, &displs))
    }

    fn barrier(&self) -> Result<()> {
        self.comm().barrier();
        Ok(())
    }

    fn abort(&self, code: i32) -> ! {
        // Not through the lock: another thread may hold it inside a collective that will
        // never finish.
        // SAFETY: MPI is initialised (this value exists only after `start`), and MPI_Abort
        // may be called from any thread at thread level Serialized or higher.
        unsafe { mpi::ffi::MPI_Abort(mpi::ffi::RSMPI_COMM_WORLD, code) };
        std::process::exit(code)
    }

    fn traffic(&self) -> Traffic {
        *self.traffic.lock().unwrap_or_else(|e| e.into_inner())
    }
}
