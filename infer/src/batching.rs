//! Batching for serving: texts sorted by length, grouped under a token budget (not a
//! sequence count), results put back in input order.

use crate::options::Progress;

/// Groups the indices of sequences with these `lengths` into batches: longest first (ties
/// keep input order), each batch's padded size `sequences × longest` at most
/// `max_batch_tokens`; a sequence longer than the budget forms a batch of its own.
pub fn plan_batches(lengths: &[usize], max_batch_tokens: usize) -> Vec<Vec<usize>> {
    let mut order: Vec<usize> = (0..lengths.len()).collect();
    order.sort_by_key(|&i| std::cmp::Reverse(lengths[i]));
    let mut batches = Vec::new();
    let mut current: Vec<usize> = Vec::new();
    for i in order {
        // Sorted longest first: the batch's first sequence sets its padded width.
        let longest = current.first().map_or(lengths[i], |&first| lengths[first]);
        if !current.is_empty() && (current.len() + 1) * longest > max_batch_tokens {
            batches.push(std::mem::take(&mut current));
        }
        current.push(i);
    }
    if !current.is_empty() {
        batches.push(current);
    }
    batches
}

/// Runs `run` on each batch of [`plan_batches`] (it gets the batch's input indices and
/// returns one result per index, in that order) and returns the results in input order.
/// `progress`, if any, hears the number of sequences done after each batch.
///
/// # Errors
/// The first error `run` returns.
///
/// # Panics
/// If `run` returns another number of results than it got indices (a bug in the caller).
pub fn run_batched<T, E>(
    lengths: &[usize],
    max_batch_tokens: usize,
    progress: Option<&Progress>,
    mut run: impl FnMut(&[usize]) -> Result<Vec<T>, E>,
) -> Result<Vec<T>, E> {
    let mut slots: Vec<Option<T>> = std::iter::repeat_with(|| None)
        .take(lengths.len())
        .collect();
    let mut done = 0;
    for batch in plan_batches(lengths, max_batch_tokens) {
        let results = run(&batch)?;
        assert_eq!(results.len(), batch.len(), "one result per sequence");
        for (&index, result) in batch.iter().zip(results) {
            slots[index] = Some(result);
        }
        done += batch.len();
        if let Some(progress) = progress {
            progress(done);
        }
    }
    Ok(slots
        .into_iter()
        .map(|slot| slot.expect("every index is in exactly one batch"))
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn batches_are_sorted_capped_and_cover_every_index_once() {
        let lengths = [3, 10, 7, 10, 1, 25, 4];
        let batches = plan_batches(&lengths, 20);
        // 25 alone (over the cap); 10, 10 (2 × 10 = 20); 7, 4 (a third would make 3 × 7 = 21); 3, 1.
        assert_eq!(batches, vec![vec![5], vec![1, 3], vec![2, 6], vec![0, 4]]);
        let mut seen: Vec<usize> = batches.concat();
        seen.sort();
        assert_eq!(seen, (0..lengths.len()).collect::<Vec<_>>());
        for batch in &batches {
            let longest = batch.iter().map(|&i| lengths[i]).max().unwrap();
            assert!(batch.len() == 1 || batch.len() * longest <= 20, "{batch:?}");
        }
    }

    #[test]
    fn results_come_back_in_input_order() {
        let lengths = [5, 1, 9, 3, 9, 2];
        let progress_calls = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let calls = progress_calls.clone();
        let progress: Progress = std::sync::Arc::new(move |n| calls.lock().unwrap().push(n));
        let out = run_batched(&lengths, 10, Some(&progress), |batch| {
            Ok::<_, ()>(batch.iter().map(|&i| lengths[i] * 100 + i).collect())
        })
        .unwrap();
        assert_eq!(out, vec![500, 101, 902, 303, 904, 205]);
        assert_eq!(progress_calls.lock().unwrap().last(), Some(&6));
    }
}
