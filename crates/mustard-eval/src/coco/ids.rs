//! Positions by id, for the lookups every record makes (its image, its category).

use std::collections::HashMap;

/// The position of each id of a list: a table indexed by `id - min` where the ids are dense
/// enough (COCO's usually count up from 0 or 1), a hash map otherwise.
#[derive(Clone, Debug)]
pub(crate) enum IdIndex {
    Dense { min: i64, slots: Vec<u32> },
    Sparse(HashMap<i64, usize>),
}

/// A table slot without an id.
const EMPTY: u32 = u32::MAX;

impl IdIndex {
    /// The index of `ids` (position = place in the list), or the first repeated id as
    /// `(id, first position, second position)`.
    pub(crate) fn new(ids: &[i64]) -> Result<IdIndex, (i64, usize, usize)> {
        let (Some(&min), Some(&max)) = (ids.iter().min(), ids.iter().max()) else {
            return Ok(IdIndex::Dense {
                min: 0,
                slots: Vec::new(),
            });
        };
        let span = i128::from(max) - i128::from(min) + 1;
        let dense = ids.len() < EMPTY as usize && span <= 4 * ids.len() as i128 + 1024;
        if dense {
            let mut slots = vec![EMPTY; span as usize];
            for (i, &id) in ids.iter().enumerate() {
                let slot = &mut slots[(id - min) as usize];
                if *slot != EMPTY {
                    return Err((id, *slot as usize, i));
                }
                *slot = i as u32;
            }
            Ok(IdIndex::Dense { min, slots })
        } else {
            let mut map = HashMap::with_capacity(ids.len());
            for (i, &id) in ids.iter().enumerate() {
                if let Some(first) = map.insert(id, i) {
                    return Err((id, first, i));
                }
            }
            Ok(IdIndex::Sparse(map))
        }
    }

    /// The position of `id`.
    #[inline]
    pub(crate) fn get(&self, id: i64) -> Option<usize> {
        match self {
            IdIndex::Dense { min, slots } => {
                let at = usize::try_from(id.checked_sub(*min)?).ok()?;
                match *slots.get(at)? {
                    EMPTY => None,
                    i => Some(i as usize),
                }
            }
            IdIndex::Sparse(map) => map.get(&id).copied(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dense_and_sparse_ids_find_the_same_positions() {
        let dense = [5i64, 3, 9, 4, -2];
        let sparse = [5i64, 3, 9_000_000, 4, i64::MIN, i64::MAX];
        for ids in [&dense[..], &sparse[..]] {
            let index = IdIndex::new(ids).unwrap();
            assert_eq!(
                matches!(index, IdIndex::Dense { .. }),
                ids.len() == dense.len()
            );
            for (i, &id) in ids.iter().enumerate() {
                assert_eq!(index.get(id), Some(i));
            }
            for absent in [0, 6, 8, 10, -1, 1_000, i64::MIN + 1, i64::MAX - 1] {
                assert_eq!(index.get(absent), None, "{absent}");
            }
        }
        assert_eq!(IdIndex::new(&[]).unwrap().get(0), None);
        assert_eq!(IdIndex::new(&[1, 2, 1]).unwrap_err(), (1, 0, 2));
        assert_eq!(
            IdIndex::new(&[1, i64::MAX, 7, i64::MAX]).unwrap_err(),
            (i64::MAX, 1, 3)
        );
    }
}
