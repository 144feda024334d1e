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
    /// NCCL's communicator over the same processes, made by the first CUDA all-reduce.
    #[cfg(feature = "nccl")]
    nccl: std::sync::OnceLock<Mutex<Nccl>>,
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
            #[cfg(feature = "nccl")]
            nccl: Default::default(),
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

    #[cfg(feature = "nccl")]
    fn all_reduce_cuda(&self, values: super::CudaValues<'_>) -> Result<()> {
        use cudarc::nccl::safe::ReduceOp;
        if super::share_gpu() {
            return super::cuda_through_host(self, values);
        }
        let started = Instant::now();
        let stream = match &values {
            super::CudaValues::F32(s) => s.stream().clone(),
            super::CudaValues::F64(s) => s.stream().clone(),
        };
        let nccl = self.nccl(&stream)?;
        let comm = nccl.lock().unwrap_or_else(|e| e.into_inner());
        let failed = |e: cudarc::nccl::result::NcclError| Error::Collective {
            op: "NCCL all-reduce",
            processes: self.size,
            reason: format!("{e:?}"),
        };
        let bytes = match values {
            super::CudaValues::F32(s) => {
                comm.0
                    .all_reduce_in_place(s, &ReduceOp::Sum)
                    .map_err(failed)?;
                s.len() * 4
            }
            super::CudaValues::F64(s) => {
                comm.0
                    .all_reduce_in_place(s, &ReduceOp::Sum)
                    .map_err(failed)?;
                s.len() * 8
            }
        };
        drop(comm);
        self.count(bytes, started);
        Ok(())
    }
}

#[cfg(feature = "nccl")]
use candle_core::cuda_backend::cudarc;

/// NCCL's communicator of this process.
#[cfg(feature = "nccl")]
struct Nccl(cudarc::nccl::safe::Comm);

// SAFETY: an NCCL communicator may be used from any thread, one call at a time: it is only
// reached through `Mpi::nccl`'s lock.
#[cfg(feature = "nccl")]
unsafe impl Send for Nccl {}
// SAFETY: as for `Send`.
#[cfg(feature = "nccl")]
unsafe impl Sync for Nccl {}

#[cfg(feature = "nccl")]
impl Mpi {
    /// The NCCL communicator, made on first use on `stream` (the device's stream, on which
    /// every CUDA op of this process runs): rank 0 makes NCCL's unique id and broadcasts it over
    /// MPI, then every process joins. Every process reaches its first CUDA all-reduce at the
    /// same point of the same step, so they all make it together.
    fn nccl(&self, stream: &std::sync::Arc<cudarc::driver::CudaStream>) -> Result<&Mutex<Nccl>> {
        if let Some(n) = self.nccl.get() {
            return Ok(n);
        }
        let failed = |e: cudarc::nccl::result::NcclError| {
            Error::Collective {
            op: "NCCL initialisation",
            processes: self.size,
            reason: format!(
                "{e:?} (NCCL's library, libnccl.so.2, must be found by the dynamic loader, one process per GPU)"
            ),
        }
        };
        let mut id = Vec::new();
        if self.rank == 0 {
            let unique = cudarc::nccl::safe::Id::new().map_err(failed)?;
            id = unique.internal().iter().map(|&c| c as u8).collect();
        }
        self.broadcast(0, &mut id)?;
        if id.len() != 128 {
            return Err(Error::Collective {
                op: "NCCL initialisation",
                processes: self.size,
                reason: format!("rank 0 sent an id of {} bytes, not 128", id.len()),
            });
        }
        let internal: [core::ffi::c_char; 128] =
            std::array::from_fn(|i| id[i] as core::ffi::c_char);
        let comm = cudarc::nccl::safe::Comm::from_rank(
            stream.clone(),
            self.rank,
            self.size,
            cudarc::nccl::safe::Id::uninit(internal),
        )
        .map_err(failed)?;
        let _ = self.nccl.set(Mutex::new(Nccl(comm)));
        Ok(self.nccl.get().expect("set above"))
    }
}
