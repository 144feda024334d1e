//! Data-parallel training across processes: the collectives a trainer needs (all-reduce,
//! broadcast, gather, barrier) behind one small trait, [`Collective`], with a single-process
//! implementation ([`Single`]) and, with the `distributed` feature, MPI's ([`Mpi`], over the
//! system's Open MPI or MPICH through rsmpi).
//!
//! The process's world is set once, by [`init`], from what the launcher (`mpirun`, `srun`, a
//! Kubernetes job running `mpirun`) put in the environment; [`world`] returns it anywhere.
//! While a training step runs, the trainer opens a [`Scope`]: inside it the loss normalisers
//! ([`global_sum`]) and BatchNorm's statistics (`ops::batch_norm_train`) are summed over the
//! processes, so that N processes compute the loss and gradients of one process with the same
//! global batch, up to the order of floating-point sums.

use std::cell::RefCell;
use std::sync::{Arc, OnceLock};

use candle_core::{DType, Tensor};

use crate::Result;

#[cfg(feature = "distributed")]
mod mpi_world;
#[cfg(feature = "distributed")]
pub use mpi_world::Mpi;

/// The collective operations of data-parallel training. Every process calls the same
/// operations in the same order; sums are elementwise over processes.
pub trait Collective: Send + Sync {
    /// This process's rank, `0..size`.
    fn rank(&self) -> usize;
    /// The number of processes.
    fn size(&self) -> usize;
    /// The rank among the processes of this machine (which GPU to use).
    fn local_rank(&self) -> usize;
    /// Replaces `values` by their sum over all processes.
    fn all_reduce_f64(&self, values: &mut [f64]) -> Result<()>;
    /// Replaces `values` by their sum over all processes.
    fn all_reduce_f32(&self, values: &mut [f32]) -> Result<()>;
    /// Replaces `bytes` on every process by `root`'s (any length).
    fn broadcast(&self, root: usize, bytes: &mut Vec<u8>) -> Result<()>;
    /// Every process's `bytes`, in rank order, on `root` (an empty list elsewhere).
    fn gather(&self, root: usize, bytes: &[u8]) -> Result<Vec<Vec<u8>>>;
    /// Every process's `bytes`, in rank order, on every process.
    fn all_gather(&self, bytes: &[u8]) -> Result<Vec<Vec<u8>>>;
    /// Waits until every process has called it.
    fn barrier(&self) -> Result<()>;
    /// Ends every process at once with `code` (a process that fails ends the run).
    fn abort(&self, code: i32) -> !;
    /// What this process's all-reduces carried so far (nothing for one process).
    fn traffic(&self) -> Traffic {
        Traffic::default()
    }
    /// Replaces a CUDA buffer by its sum over all processes. By default through the host
    /// (copied out, [`Collective::all_reduce_f32`] or `_f64`, copied back); with the `nccl`
    /// feature MPI's world sums on the device, through NCCL.
    #[cfg(feature = "cuda")]
    fn all_reduce_cuda(&self, values: CudaValues<'_>) -> Result<()> {
        cuda_through_host(self, values)
    }
}

/// A CUDA buffer of one of the float types training reduces.
#[cfg(feature = "cuda")]
pub enum CudaValues<'a> {
    /// f32 values.
    F32(&'a mut candle_core::cuda_backend::cudarc::driver::CudaSlice<f32>),
    /// f64 values.
    F64(&'a mut candle_core::cuda_backend::cudarc::driver::CudaSlice<f64>),
}

/// [`Collective::all_reduce_cuda`] through the host.
#[cfg(feature = "cuda")]
pub(crate) fn cuda_through_host<C: Collective + ?Sized>(
    world: &C,
    values: CudaValues<'_>,
) -> Result<()> {
    use candle_core::cuda_backend::WrapErr;
    match values {
        CudaValues::F32(s) => {
            let stream = s.stream().clone();
            let mut host = stream.clone_dtoh(s).w()?;
            world.all_reduce_f32(&mut host)?;
            stream.memcpy_htod(&host, s).w()?;
        }
        CudaValues::F64(s) => {
            let stream = s.stream().clone();
            let mut host = stream.clone_dtoh(s).w()?;
            world.all_reduce_f64(&mut host)?;
            stream.memcpy_htod(&host, s).w()?;
        }
    }
    Ok(())
}

/// What the all-reduces of a process carried.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Traffic {
    /// Calls.
    pub calls: u64,
    /// Bytes reduced (this process's buffer sizes).
    pub bytes: u64,
    /// Seconds spent inside them (waiting for the other processes included).
    pub seconds: f64,
}

/// One process: every collective is the identity.
#[derive(Debug, Clone, Copy, Default)]
pub struct Single;

impl Collective for Single {
    fn rank(&self) -> usize {
        0
    }
    fn size(&self) -> usize {
        1
    }
    fn local_rank(&self) -> usize {
        0
    }
    fn all_reduce_f64(&self, _: &mut [f64]) -> Result<()> {
        Ok(())
    }
    fn all_reduce_f32(&self, _: &mut [f32]) -> Result<()> {
        Ok(())
    }
    fn broadcast(&self, _: usize, _: &mut Vec<u8>) -> Result<()> {
        Ok(())
    }
    fn gather(&self, _: usize, bytes: &[u8]) -> Result<Vec<Vec<u8>>> {
        Ok(vec![bytes.to_vec()])
    }
    fn all_gather(&self, bytes: &[u8]) -> Result<Vec<Vec<u8>>> {
        Ok(vec![bytes.to_vec()])
    }
    fn barrier(&self) -> Result<()> {
        Ok(())
    }
    fn abort(&self, code: i32) -> ! {
        std::process::exit(code)
    }
}

static WORLD: OnceLock<Arc<dyn Collective>> = OnceLock::new();

/// The processes of this run: what [`init`] set up, or a single process.
pub fn world() -> Arc<dyn Collective> {
    WORLD
        .get()
        .cloned()
        .unwrap_or_else(|| Arc::new(Single) as Arc<dyn Collective>)
}

/// Whether the processes of a machine share one GPU (`MUSTARD_SHARE_GPU=1`): each opens the
/// device it is given rather than the next ones by local rank, and CUDA sums go through the host
/// (NCCL will not put two processes of one communicator on one GPU). For checks on a machine
/// with one GPU; a real run gives each process its own.
pub fn share_gpu() -> bool {
    std::env::var("MUSTARD_SHARE_GPU").is_ok_and(|v| v == "1")
}

/// Whether this process is rank 0 (the one that writes files and decides).
pub fn is_main() -> bool {
    world().rank() == 0
}

/// The environment variables by which launchers say how many processes they started, in the
/// order they are looked at: Open MPI's `mpirun`, MPICH's and Intel MPI's (Hydra), MVAPICH's,
/// and a Slurm job step (`srun`; `SLURM_NTASKS` alone is also set in a batch script's one
/// process).
pub const LAUNCHER_VARIABLES: [&str; 4] = [
    "OMPI_COMM_WORLD_SIZE",
    "PMI_SIZE",
    "MV2_COMM_WORLD_SIZE",
    "SLURM_STEP_NUM_TASKS",
];

/// The number of processes a launcher started and the variable that says so, when any of
/// [`LAUNCHER_VARIABLES`] is set to a number.
pub fn launched() -> Option<(usize, &'static str)> {
    LAUNCHER_VARIABLES.iter().find_map(|&v| {
        let n = std::env::var(v).ok()?.trim().parse::<usize>().ok()?;
        Some((n, v))
    })
}

/// What [`init`] set up; dropping it ends MPI (keep it alive until the process is done).
pub struct Launch {
    #[cfg(feature = "distributed")]
    _mpi: Option<mpi_world::Universe>,
}

impl Launch {
    /// The processes.
    pub fn world(&self) -> Arc<dyn Collective> {
        world()
    }
}

/// Sets up this process's world from the launcher's environment: MPI when a launcher started
/// it (with the `distributed` feature), else a single process. A build without the feature
/// that a launcher started as one of several processes refuses ([`crate::Error::NotDistributed`]),
/// so that N copies never train the same run side by side. Call once, first thing.
pub fn init() -> Result<Launch> {
    let launched = launched();
    #[cfg(feature = "distributed")]
    {
        if launched.is_some() {
            let (universe, mpi) = mpi_world::start()?;
            // The processes of a machine share its cores: unless told otherwise, each takes
            // its part for its threads instead of all of them.
            if std::env::var_os("RAYON_NUM_THREADS").is_none() && mpi.local_size() > 1 {
                let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
                let _ = rayon::ThreadPoolBuilder::new()
                    .num_threads((cores / mpi.local_size()).max(1))
                    .build_global();
            }
            let world: Arc<dyn Collective> = Arc::new(mpi);
            if world.size() > 1 {
                abort_on_panic(world.clone());
            }
            let _ = WORLD.set(world);
            return Ok(Launch {
                _mpi: Some(universe),
            });
        }
        Ok(Launch { _mpi: None })
    }
    #[cfg(not(feature = "distributed"))]
    {
        match launched {
            Some((processes, variable)) if processes > 1 => Err(crate::Error::NotDistributed {
                processes,
                variable,
            }),
            _ => Ok(Launch {}),
        }
    }
}

/// A panic in one process would leave the others waiting in a collective forever: it ends
/// them all instead, after the panic's message.
#[cfg(feature = "distributed")]
fn abort_on_panic(world: Arc<dyn Collective>) {
    let default = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        default(info);
        world.abort(101);
    }));
}

/// What a training step shares with the other processes (see [`enter`]).
#[derive(Clone)]
pub struct Scope {
    /// The processes.
    pub world: Arc<dyn Collective>,
    /// Sum BatchNorm's statistics over the processes (else each normalises by its own share).
    pub sync_batch_norm: bool,
}

thread_local! {
    static SCOPE: RefCell<Option<Scope>> = const { RefCell::new(None) };
}

/// Restores the scope before [`enter`] when dropped.
pub struct ScopeGuard(Option<Scope>);

impl Drop for ScopeGuard {
    fn drop(&mut self) {
        let previous = self.0.take();
        SCOPE.with(|s| *s.borrow_mut() = previous);
    }
}

/// Makes the loss normalisers and BatchNorm of this thread global over `scope.world` until
/// the guard is dropped (the trainer holds it for one forward and backward pass).
pub fn enter(scope: Scope) -> ScopeGuard {
    ScopeGuard(SCOPE.with(|s| s.borrow_mut().replace(scope)))
}

/// The scope this thread is in, when it spans more than one process.
pub fn scope() -> Option<Scope> {
    SCOPE
        .with(|s| s.borrow().clone())
        .filter(|s| s.world.size() > 1)
}

/// `local` summed over the processes of this thread's [`Scope`] (itself outside one): the
/// global count a loss divides by. The result carries no gradient (counts come from targets).
pub fn global_sum(local: &Tensor) -> Result<Tensor> {
    let Some(scope) = scope() else {
        return Ok(local.clone());
    };
    Ok(all_reduce(scope.world.as_ref(), &local.to_dtype(DType::F64)?)?.to_dtype(local.dtype())?)
}

/// A number summed over the processes of this thread's [`Scope`] (itself outside one).
pub fn global_sum_f64(local: f64) -> Result<f64> {
    let Some(scope) = scope() else {
        return Ok(local);
    };
    let mut v = [local];
    scope.world.all_reduce_f64(&mut v)?;
    Ok(v[0])
}

/// Bytes of one flat buffer of [`all_reduce_grads`].
pub const BUCKET_BYTES: usize = 16 << 20;

/// Sums the gradients of `vars` over the processes, in flat buffers of up to
/// [`BUCKET_BYTES`] (consecutive variables of one dtype, in `vars`' order, which every process
/// shares): a few calls per step instead of one per parameter. A variable without a gradient
/// here counts as zeros (another process may have one) and gets the sum.
pub fn all_reduce_grads(
    world: &dyn Collective,
    grads: &mut candle_core::backprop::GradStore,
    vars: &[(String, candle_core::Var)],
) -> Result<()> {
    if world.size() == 1 {
        return Ok(());
    }
    let mut start = 0;
    while start < vars.len() {
        let dtype = vars[start].1.dtype();
        let mut end = start;
        let mut size = 0;
        while end < vars.len()
            && vars[end].1.dtype() == dtype
            && (end == start
                || size + vars[end].1.elem_count() * dtype.size_in_bytes() <= BUCKET_BYTES)
        {
            size += vars[end].1.elem_count() * dtype.size_in_bytes();
            end += 1;
        }
        let bucket = &vars[start..end];
        let flat = |t: Option<&Tensor>, v: &candle_core::Var| -> Result<Tensor> {
            Ok(match t {
                Some(g) => g.to_dtype(dtype)?.flatten_all()?,
                None => v.as_tensor().zeros_like()?.flatten_all()?,
            })
        };
        let parts = bucket
            .iter()
            .map(|(_, v)| flat(grads.get(v.as_tensor()), v))
            .collect::<Result<Vec<_>>>()?;
        let joined = Tensor::cat(&parts, 0)?;
        let wire = if dtype == DType::F64 {
            DType::F64
        } else {
            DType::F32
        };
        let summed = all_reduce(world, &joined.to_dtype(wire)?)?.to_dtype(dtype)?;
        let mut offset = 0;
        for (_, v) in bucket {
            let n = v.elem_count();
            let g = summed.narrow(0, offset, n)?.reshape(v.shape())?;
            grads.insert(v.as_tensor(), g);
            offset += n;
        }
        start = end;
    }
    Ok(())
}

/// `t` (f32 or f64) summed over the processes, as a new tensor on `t`'s device: on the CPU
/// through [`Collective::all_reduce_f32`] or `_f64`, on CUDA through
/// [`Collective::all_reduce_cuda`] (NCCL with the `nccl` feature: nothing leaves the GPU), on
/// other devices through the host.
pub fn all_reduce(world: &dyn Collective, t: &Tensor) -> Result<Tensor> {
    if world.size() == 1 {
        return Ok(t.clone());
    }
    let t = t.contiguous()?;
    match t.device() {
        candle_core::Device::Cpu | candle_core::Device::Cuda(_) => {
            Ok(t.apply_op1_no_bwd(&AllReduce { world })?)
        }
        device => {
            let host = t.to_device(&candle_core::Device::Cpu)?;
            Ok(host
                .apply_op1_no_bwd(&AllReduce { world })?
                .to_device(device)?)
        }
    }
}

/// The op of [`all_reduce`]: a copy of its input, summed over the processes.
struct AllReduce<'a> {
    world: &'a dyn Collective,
}

impl AllReduce<'_> {
    fn failed(e: crate::Error) -> candle_core::Error {
        candle_core::Error::Msg(e.to_string())
    }
}

impl candle_core::CustomOp1 for AllReduce<'_> {
    fn name(&self) -> &'static str {
        "mustard.all_reduce"
    }

    fn cpu_fwd(
        &self,
        s: &candle_core::CpuStorage,
        l: &candle_core::Layout,
    ) -> candle_core::Result<(candle_core::CpuStorage, candle_core::Shape)> {
        let range = match l.contiguous_offsets() {
            Some((a, b)) => a..b,
            None => candle_core::bail!("{}: the input is not contiguous", self.name()),
        };
        let out = match s {
            candle_core::CpuStorage::F32(v) => {
                let mut v = v[range].to_vec();
                self.world.all_reduce_f32(&mut v).map_err(Self::failed)?;
                candle_core::CpuStorage::F32(v)
            }
            candle_core::CpuStorage::F64(v) => {
                let mut v = v[range].to_vec();
                self.world.all_reduce_f64(&mut v).map_err(Self::failed)?;
                candle_core::CpuStorage::F64(v)
            }
            _ => candle_core::bail!("{}: only f32 and f64 are summed", self.name()),
        };
        Ok((out, l.shape().clone()))
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        s: &candle_core::CudaStorage,
        l: &candle_core::Layout,
    ) -> candle_core::Result<(candle_core::CudaStorage, candle_core::Shape)> {
        use candle_core::backend::BackendStorage;
        use candle_core::cuda_backend::{CudaStorageSlice, WrapErr};
        let range = match l.contiguous_offsets() {
            Some((a, b)) => a..b,
            None => candle_core::bail!("{}: the input is not contiguous", self.name()),
        };
        let dev = s.device().clone();
        let stream = dev.cuda_stream();
        let out = match &s.slice {
            CudaStorageSlice::F32(v) => {
                let mut copy = stream.clone_dtod(&v.slice(range)).w()?;
                self.world
                    .all_reduce_cuda(CudaValues::F32(&mut copy))
                    .map_err(Self::failed)?;
                candle_core::CudaStorage::wrap_cuda_slice(copy, dev)
            }
            CudaStorageSlice::F64(v) => {
                let mut copy = stream.clone_dtod(&v.slice(range)).w()?;
                self.world
                    .all_reduce_cuda(CudaValues::F64(&mut copy))
                    .map_err(Self::failed)?;
                candle_core::CudaStorage::wrap_cuda_slice(copy, dev)
            }
            _ => candle_core::bail!("{}: only f32 and f64 are summed", self.name()),
        };
        Ok((out, l.shape().clone()))
    }
}

/// Every process's result of a fallible step, agreed: the first error of any process (named
/// with its rank) on every process, so that a process that cannot open its data or device
/// ends every process with its error rather than leaving them waiting.
pub fn agree<T>(
    world: &dyn Collective,
    local: std::result::Result<T, String>,
) -> Result<T, String> {
    if world.size() == 1 {
        return local;
    }
    let mine = match &local {
        Ok(_) => Vec::new(),
        Err(e) => e.as_bytes().to_vec(),
    };
    let all = world.all_gather(&mine).map_err(|e| e.to_string())?;
    if let Some((rank, e)) = all.iter().enumerate().find(|(_, e)| !e.is_empty()) {
        let text = String::from_utf8_lossy(e).into_owned();
        return Err(if rank == world.rank() {
            text
        } else {
            format!("process {rank} of {}: {text}", world.size())
        });
    }
    local
}

/// The share of process `rank` of `n` items split over `size` processes: contiguous, the first
/// `n mod size` processes one item more (8 over 3: 3, 3, 2).
pub fn share(n: usize, rank: usize, size: usize) -> std::ops::Range<usize> {
    let (base, extra) = (n / size, n % size);
    let start = rank * base + rank.min(extra);
    start..start + base + usize::from(rank < extra)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shares_cover_every_item_once_with_uneven_sizes() {
        let shares: Vec<_> = (0..3).map(|r| share(8, r, 3)).collect();
        assert_eq!(shares, [0..3, 3..6, 6..8]);
        assert_eq!(share(2, 2, 3), 2..2);
        for (n, size) in [(1, 1), (7, 2), (64, 5), (3, 4)] {
            let joined: Vec<usize> = (0..size).flat_map(|r| share(n, r, size)).collect();
            assert_eq!(joined, (0..n).collect::<Vec<_>>(), "{n} over {size}");
        }
    }

    #[test]
    fn one_process_collectives_are_the_identity() {
        let w = Single;
        let mut v = [1.5, 2.0];
        w.all_reduce_f64(&mut v).unwrap();
        assert_eq!(v, [1.5, 2.0]);
        assert_eq!(w.all_gather(b"x").unwrap(), [b"x".to_vec()]);
        assert_eq!(agree(&w, Ok::<_, String>(3)).unwrap(), 3);
        let t = Tensor::new(&[4.0f32], &candle_core::Device::Cpu).unwrap();
        // Outside a scope (and in a one-process scope) a count stays local.
        let _guard = enter(Scope {
            world: Arc::new(Single),
            sync_batch_norm: true,
        });
        assert!(scope().is_none());
        assert_eq!(global_sum(&t).unwrap().to_vec1::<f32>().unwrap(), [4.0]);
    }
}
