use std::sync::mpsc::{sync_channel, Receiver};
use std::sync::Arc;
use std::thread::JoinHandle;

use mustard_core::rng::Rng;
use rayon::prelude::*;

use crate::augment::AugmentConfig;
use crate::{Error, Result, Sample, Source};

/// Turns samples into training items and items into batches. Supplied by the caller (the
/// heads' target encoders live upstream), so the data crate never depends on the heads.
pub trait BatchEncoder: Send + Sync + 'static {
    /// What one sample becomes (targets for every task).
    type Item: Send + 'static;
    /// What a batch of items becomes (tensors).
    type Batch: Send + 'static;
    /// Encodes one augmented sample; runs in the loader's worker threads.
    fn encode(&self, sample: Sample) -> Result<Self::Item>;
    /// Stacks the items of one batch, in order.
    fn collate(&self, items: Vec<Self::Item>) -> Result<Self::Batch>;
}

/// How a [`Loader`] iterates.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct LoaderConfig {
    /// Samples per batch.
    pub batch_size: usize,
    /// Batches prepared ahead of the consumer (memory is bounded by this many batches plus the
    /// one being built).
    pub prefetch: usize,
    /// Shuffle every epoch.
    pub shuffle: bool,
    /// Drop the last incomplete batch.
    pub drop_last: bool,
    /// Seed of the shuffling and of every augmentation.
    pub seed: u64,
    /// Worker threads (None: rayon's global pool).
    pub threads: Option<usize>,
    /// Augmentation of every sample.
    pub augment: AugmentConfig,
}

impl LoaderConfig {
    /// Training defaults: shuffled, augmented, 2 batches of prefetch.
    pub fn train(batch_size: usize, size: u32, seed: u64) -> Self {
        Self {
            batch_size,
            prefetch: 2,
            shuffle: true,
            drop_last: true,
            seed,
            threads: None,
            augment: AugmentConfig::train(size),
        }
    }

    /// Evaluation: in order, letterboxed, every sample.
    pub fn eval(batch_size: usize, size: u32) -> Self {
        Self {
            batch_size,
            prefetch: 2,
            shuffle: false,
            drop_last: false,
            seed: 0,
            threads: None,
            augment: AugmentConfig::eval(size),
        }
    }
}

/// A parallel, prefetching data loader: decode → augment → encode in rayon workers, collate,
/// and hand batches over through a bounded channel.
///
/// Sample `i` of epoch `e` is augmented with a generator derived from `(seed, e, i)`, and the
/// order of epoch `e` from `(seed, e)`, so batches are identical whatever the thread count.
pub struct Loader<E: BatchEncoder> {
    dataset: Arc<dyn Source>,
    encoder: Arc<E>,
    config: LoaderConfig,
    pool: Option<Arc<rayon::ThreadPool>>,
}

impl<E: BatchEncoder> Loader<E> {
    /// A loader over `dataset` (a [`Dataset`](crate::Dataset) or any other [`Source`]).
    pub fn new(dataset: Arc<dyn Source>, encoder: Arc<E>, config: LoaderConfig) -> Result<Self> {
        if config.batch_size == 0 || config.prefetch == 0 {
            return Err(Error::config(
                "loader",
                format!(
                    "batch_size {} and prefetch {} must be at least 1",
                    config.batch_size, config.prefetch
                ),
            ));
        }
        config.augment.validate()?;
        if dataset.is_empty() {
            return Err(Error::config(
                "loader",
                format!("{} has no usable images", dataset.path().display()),
            ));
        }
        let pool = match config.threads {
            Some(n) => Some(Arc::new(
                rayon::ThreadPoolBuilder::new()
                    .num_threads(n)
                    .build()
                    .map_err(|e| Error::config("loader threads", e.to_string()))?,
            )),
            None => None,
        };
        Ok(Self {
            dataset,
            encoder,
            config,
            pool,
        })
    }

    /// Batches in one epoch.
    pub fn batches_per_epoch(&self) -> usize {
        let n = self.dataset.len();
        if self.config.drop_last {
            (n / self.config.batch_size).max(1)
        } else {
            n.div_ceil(self.config.batch_size)
        }
    }

    /// The sample order of `epoch`.
    pub fn order(&self, epoch: u64) -> Vec<usize> {
        let mut order: Vec<usize> = (0..self.dataset.len()).collect();
        if self.config.shuffle {
            Rng::derive(self.config.seed, &[epoch]).shuffle(&mut order);
        }
        order
    }

    /// Iterates the batches of `epoch`, starting at batch `start` (to resume mid-epoch).
    pub fn epoch_from(&self, epoch: u64, start: usize) -> Epoch<E::Batch> {
        let order = self.order(epoch);
        let bs = self.config.batch_size;
        let batches: Vec<Vec<usize>> = order
            .chunks(bs)
            .filter(|c| !self.config.drop_last || c.len() == bs || order.len() < bs)
            .skip(start)
            .map(<[usize]>::to_vec)
            .collect();
        let (tx, rx) = sync_channel(self.config.prefetch);
        let (dataset, encoder, pool) = (
            self.dataset.clone(),
            self.encoder.clone(),
            self.pool.clone(),
        );
        let (seed, augment) = (self.config.seed, self.config.augment.clone());
        let remaining = batches.len();
        let handle = std::thread::spawn(move || {
            for indices in batches {
                let build = || -> Result<E::Batch> {
                    let items = indices
                        .par_iter()
                        .map(|&i| {
                            let mut rng = Rng::derive(seed, &[epoch, i as u64]);
                            let sample = dataset.load(i)?;
                            encoder.encode(augment.apply(sample, dataset.flip_pairs(), &mut rng))
                        })
                        .collect::<Result<Vec<_>>>()?;
                    encoder.collate(items)
                };
                let batch = match &pool {
                    Some(pool) => pool.install(build),
                    None => build(),
                };
                let failed = batch.is_err();
                if tx.send(batch).is_err() || failed {
                    return;
                }
            }
        });
        Epoch {
            rx,
            handle: Some(handle),
            remaining,
        }
    }

    /// Iterates all batches of `epoch`.
    pub fn epoch(&self, epoch: u64) -> Epoch<E::Batch> {
        self.epoch_from(epoch, 0)
    }
}

/// The batches of one epoch, produced in the background.
pub struct Epoch<B> {
    rx: Receiver<Result<B>>,
    handle: Option<JoinHandle<()>>,
    remaining: usize,
}

impl<B> Iterator for Epoch<B> {
    type Item = Result<B>;

    fn next(&mut self) -> Option<Result<B>> {
        if self.remaining == 0 {
            return None;
        }
        match self.rx.recv() {
            Ok(batch) => {
                self.remaining = if batch.is_err() {
                    0
                } else {
                    self.remaining - 1
                };
                Some(batch)
            }
            Err(_) => {
                self.remaining = 0;
                None
            }
        }
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        (self.remaining, Some(self.remaining))
    }
}

impl<B> Drop for Epoch<B> {
    fn drop(&mut self) {
        // Unblock the producer (its send fails once the receiver is gone), then wait for it.
        let (_, rx) = sync_channel(1);
        drop(std::mem::replace(&mut self.rx, rx));
        if let Some(h) = self.handle.take() {
            let _ = h.join();
        }
    }
}
