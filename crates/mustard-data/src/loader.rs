use std::collections::BTreeMap;
use std::sync::mpsc::{sync_channel, Receiver};
use std::sync::{Arc, Mutex};
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
    /// Leave out a sample whose files cannot be read or decoded (a file broken past its
    /// header) instead of failing: each is named once ([`Loader::take_skipped`]) and never read
    /// again by this loader. Without it such a file fails the epoch with an error naming it.
    #[serde(default)]
    pub skip_bad: bool,
    /// This process's share of every batch in data-parallel training: each batch (of
    /// `batch_size`, the global batch) is split over the processes ([`Share`]), so that every
    /// sample keeps its place and its augmentation whatever the number of processes.
    #[serde(skip)]
    pub share: Share,
}

/// Which part of each batch a process loads: process `rank` of `processes` takes the
/// contiguous `rank`-th share, the first `len mod processes` shares one sample larger (8 over
/// 3: 3, 3, 2).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Share {
    /// This process, `0..processes`.
    pub rank: usize,
    /// The processes.
    pub processes: usize,
}

impl Default for Share {
    /// One process, the whole batch.
    fn default() -> Self {
        Share {
            rank: 0,
            processes: 1,
        }
    }
}

impl Share {
    /// The positions of this share in a batch of `len` samples.
    pub fn of(&self, len: usize) -> std::ops::Range<usize> {
        mustard_core::dist::share(len, self.rank, self.processes)
    }
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
            skip_bad: false,
            share: Share::default(),
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
            skip_bad: false,
            share: Share::default(),
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
    skipped: Arc<Mutex<Skipped>>,
}

/// The samples a loader left out ([`LoaderConfig::skip_bad`]).
#[derive(Debug, Default)]
struct Skipped {
    /// Sample index → why it cannot be read.
    known: BTreeMap<usize, String>,
    /// Indices left out since the last [`Loader::take_skipped`].
    fresh: Vec<usize>,
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
            skipped: Arc::default(),
        })
    }

    /// The samples left out since the last call (each once, in the order met), with the
    /// reason: `(index, "path: why")`.
    pub fn take_skipped(&self) -> Vec<(usize, String)> {
        let mut s = self.skipped.lock().expect("skip list lock poisoned");
        let fresh = std::mem::take(&mut s.fresh);
        fresh
            .into_iter()
            .map(|i| (i, s.known[&i].clone()))
            .collect()
    }

    /// Every sample left out so far, by index, with the reason.
    pub fn skipped(&self) -> Vec<(usize, String)> {
        let s = self.skipped.lock().expect("skip list lock poisoned");
        s.known.iter().map(|(&i, r)| (i, r.clone())).collect()
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
        self.epoch_batches(epoch, start..usize::MAX)
    }

    /// Iterates the batches of `epoch` whose positions are in `range` (whole batches of the
    /// epoch's grid: an evaluation split over processes gives each a range of batches, so each
    /// batch is the one a single process sees).
    pub fn epoch_batches(&self, epoch: u64, range: std::ops::Range<usize>) -> Epoch<E::Batch> {
        let order = self.order(epoch);
        let bs = self.config.batch_size;
        let batches: Vec<Vec<usize>> = order
            .chunks(bs)
            .filter(|c| !self.config.drop_last || c.len() == bs || order.len() < bs)
            .skip(range.start)
            .take(range.end.saturating_sub(range.start))
            .map(|c| c[self.config.share.of(c.len())].to_vec())
            .collect();
        let (tx, rx) = sync_channel(self.config.prefetch);
        let (dataset, encoder, pool) = (
            self.dataset.clone(),
            self.encoder.clone(),
            self.pool.clone(),
        );
        let (seed, augment) = (self.config.seed, self.config.augment.clone());
        let (skip_bad, skipped) = (self.config.skip_bad, self.skipped.clone());
        let remaining = batches.len();
        let handle = std::thread::spawn(move || {
            for indices in batches {
                let build = || -> Result<Option<E::Batch>> {
                    let items = indices
                        .par_iter()
                        .map(|&i| {
                            let known = |i| {
                                skipped
                                    .lock()
                                    .expect("skip list lock poisoned")
                                    .known
                                    .contains_key(&i)
                            };
                            if skip_bad && known(i) {
                                return Ok(None);
                            }
                            let mut rng = Rng::derive(seed, &[epoch, i as u64]);
                            match dataset.load(i) {
                                Ok(sample) => encoder
                                    .encode(augment.apply(sample, dataset.flip_pairs(), &mut rng))
                                    .map(Some),
                                Err(e) if skip_bad && e.is_unreadable() => {
                                    let mut s = skipped.lock().expect("skip list lock poisoned");
                                    if s.known.insert(i, e.to_string()).is_none() {
                                        s.fresh.push(i);
                                    }
                                    Ok(None)
                                }
                                Err(e) if e.is_unreadable() => Err(Error::Unreadable {
                                    reason: e.to_string(),
                                }),
                                Err(e) => Err(e),
                            }
                        })
                        .collect::<Result<Vec<_>>>()?;
                    let items: Vec<E::Item> = items.into_iter().flatten().collect();
                    if items.is_empty() {
                        return Ok(None);
                    }
                    encoder.collate(items).map(Some)
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
            empty: 0,
        }
    }

    /// Iterates all batches of `epoch`.
    pub fn epoch(&self, epoch: u64) -> Epoch<E::Batch> {
        self.epoch_from(epoch, 0)
    }
}

/// The batches of one epoch, produced in the background. A batch whose every sample was left
/// out ([`LoaderConfig::skip_bad`]) is not yielded; [`Epoch::empty_batches`] counts them.
pub struct Epoch<B> {
    rx: Receiver<Result<Option<B>>>,
    handle: Option<JoinHandle<()>>,
    remaining: usize,
    empty: usize,
}

impl<B> Epoch<B> {
    /// Batches passed over so far because every one of their samples was left out.
    pub fn empty_batches(&self) -> usize {
        self.empty
    }

    /// The next batch of the epoch, `None` inside when this process has no sample of it (every
    /// one left out, or a share of nothing): data-parallel training steps through the batches
    /// together, whatever each process loaded.
    pub fn next_slot(&mut self) -> Option<Result<Option<B>>> {
        if self.remaining == 0 {
            return None;
        }
        match self.rx.recv() {
            Ok(Ok(batch)) => {
                self.remaining -= 1;
                self.empty += usize::from(batch.is_none());
                Some(Ok(batch))
            }
            Ok(Err(e)) => {
                self.remaining = 0;
                Some(Err(e))
            }
            Err(_) => {
                self.remaining = 0;
                None
            }
        }
    }
}

impl<B> Iterator for Epoch<B> {
    type Item = Result<B>;

    fn next(&mut self) -> Option<Result<B>> {
        loop {
            match self.next_slot()? {
                Ok(Some(batch)) => return Some(Ok(batch)),
                Ok(None) => {}
                Err(e) => return Some(Err(e)),
            }
        }
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        (0, Some(self.remaining))
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
