//! Splitting a plain kernel's walk over tiles into several launches ("passes"), so that no
//! invocation runs more loop iterations than Mesa's llvmpipe allows.
//!
//! llvmpipe (whose Vulkan driver, lavapipe, is CI's Wgpu adapter) compiles every shader with
//! one loop limiter per invocation: a counter set to `LP_MAX_TGSI_LOOP_ITERATIONS` = 65535
//! (gallivm's `lp_bld_limits.h`: "shared between every loop in a TGSI shader") and
//! decremented at every loop's back edge (`lp_exec_endloop` in `lp_bld_ir_common.c`). Once an
//! invocation has run 65535 iterations, summed over all its loops, every loop leaves after its
//! current iteration, silently: the kernel skips work and returns garbage. Without unrolling
//! (see [`plain_unroll`](super::forward::plain_unroll)) a plain kernel runs about
//! `2 · block_n · head_dim` iterations per tile, 4.3k at head_dim 64, so a cube walking 16
//! tiles (512 keys) went past the limit while 15 tiles stayed under it.
//!
//! Each pass walks at most [`TilePasses::tiles_per_pass`] of a cube's tiles and resumes from
//! the state the previous pass left in the output buffers (the forward's normalised output
//! and log-sum-exp, the backward's gradients), kept in f32 when there is more than one pass.
//! The split follows from the loop counts alone, on every runtime: with unrolled loops (Cuda)
//! a pass covers about 10k keys, so ModernBERT's sequences (≤ 8192) take one pass there.

use super::VarlenMeta;

/// Loop iterations one invocation may run: half of llvmpipe's limit, for the loops that
/// [`TilePasses::new`]'s estimates leave out (a compiler's own loops, off-by-ones).
const LOOP_BUDGET: usize = 32_768;

/// Iterations of one loop over `head_dim`: none when unrolled.
pub(crate) fn head_dim_loop(head_dim: usize, unroll: bool) -> usize {
    if unroll {
        0
    } else {
        head_dim + 1
    }
}

/// Iterations of one unit in a staging loop that `units` units share over `elements`.
pub(crate) fn staging_loop(elements: usize, units: usize) -> usize {
    elements.div_ceil(units) + 1
}

/// Most tiles of `block_n` rows that a cube of `block_m` rows walks: the longest sequence,
/// or with a window the block's rows ± the window.
pub(crate) fn walked_tiles(meta: &VarlenMeta, block_m: usize, block_n: usize) -> usize {
    let span = match meta.window {
        Some(window) => meta.max_seqlen.min(block_m + 2 * window),
        None => meta.max_seqlen,
    };
    span.div_ceil(block_n)
}

/// How a kernel's tile walk is split into launches.
#[derive(Debug, Clone, Copy)]
pub(crate) struct TilePasses {
    /// Tiles each launch walks per cube (the last may walk fewer).
    pub tiles_per_pass: usize,
    /// Launches.
    pub count: usize,
}

impl TilePasses {
    /// The passes for cubes walking up to `tiles` tiles at `per_tile` loop iterations each,
    /// plus `fixed` iterations outside the tile loop.
    pub(crate) fn new(tiles: usize, per_tile: usize, fixed: usize) -> Self {
        let tiles_per_pass = (LOOP_BUDGET.saturating_sub(fixed) / per_tile.max(1)).max(1);
        Self {
            tiles_per_pass,
            count: tiles.div_ceil(tiles_per_pass).max(1),
        }
    }

    /// The launches in order.
    pub(crate) fn launches(self) -> impl Iterator<Item = PassLaunch> {
        (0..self.count).map(move |pass| PassLaunch {
            tile_begin: (pass * self.tiles_per_pass) as u32,
            resume: pass > 0,
        })
    }
}

/// One launch of a split tile walk.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct PassLaunch {
    /// Its first tile.
    pub tile_begin: u32,
    /// Whether it resumes from the state a previous launch left.
    pub resume: bool,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passes_cover_every_tile_within_the_budget() {
        // The forward at head_dim 64 without unrolling: 32-key tiles, ~4.3k iterations each.
        let passes = TilePasses::new(128, 4_300, 130);
        assert_eq!(passes.tiles_per_pass, 7);
        assert_eq!(passes.count, 19);
        assert!(passes.tiles_per_pass * 4_300 + 130 <= LOOP_BUDGET);
        let launches: Vec<_> = passes.launches().collect();
        let launch = |tile_begin, resume| PassLaunch { tile_begin, resume };
        assert_eq!(launches[0], launch(0, false));
        assert_eq!(launches[18], launch(126, true));
        // One pass where everything fits, and at least one tile per pass.
        assert_eq!(TilePasses::new(3, 100, 0).count, 1);
        assert_eq!(TilePasses::new(0, 100, 0).count, 1);
        assert_eq!(TilePasses::new(5, 1_000_000, 0).tiles_per_pass, 1);
    }
}
