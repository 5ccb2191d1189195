//! How a row-major Burn matmul `C[m, n] = lhs[m, k] · rhs[k, n]` (any strides, batched)
//! maps onto a column-major BLAS call without copying: `Cᵀ = rhsᵀ · lhsᵀ`, where each
//! operand is read in place, flagged transposed when its view is column-major.

/// One operand as cuBLASLt sees it: a column-major matrix, read transposed or not.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) struct Operand {
    pub(crate) transposed: bool,
    /// Rows and columns of the stored (column-major) matrix.
    pub(crate) rows: usize,
    pub(crate) cols: usize,
    pub(crate) ld: usize,
    /// Elements between consecutive matrices of a batch; 0 broadcasts one matrix.
    pub(crate) batch_stride: usize,
}

impl Operand {
    /// Reads a row-major `[rows, cols]` view (strides in elements) as the column-major
    /// `[cols, rows]` operand it already is in memory, flagging a transpose when the
    /// view is itself a transposed (column-major) layout.
    fn from_view(rows: usize, cols: usize, row_stride: usize, col_stride: usize) -> Option<Self> {
        let (transposed, stored_rows, stored_cols, ld) =
            if col_stride == 1 && (rows == 1 || row_stride >= cols) {
                (false, cols, rows, row_stride.max(cols))
            } else if row_stride == 1 && (cols == 1 || col_stride >= rows) {
                (true, rows, cols, col_stride.max(rows))
            } else {
                return None;
            };
        Some(Self {
            transposed,
            rows: stored_rows,
            cols: stored_cols,
            ld,
            batch_stride: 0,
        })
    }
}

/// A batched product in cuBLASLt's column-major terms: `D[n, m] = A[n, k] · B[k, m]`, where
/// A is our `rhs` and B our `lhs` read as their transposes (row-major `C = lhs·rhs` is
/// column-major `Cᵀ = rhsᵀ·lhsᵀ`).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(crate) struct Problem {
    pub(crate) m: usize,
    pub(crate) n: usize,
    pub(crate) k: usize,
    pub(crate) batch: usize,
    pub(crate) a: Operand,
    pub(crate) b: Operand,
    pub(crate) out_shape: Vec<usize>,
}

impl Problem {
    /// The product of two views given by shape and strides (in elements), or `None` when
    /// their shapes disagree or a layout cannot be read in place.
    pub(crate) fn new(ls: &[usize], lst: &[usize], rs: &[usize], rst: &[usize]) -> Option<Self> {
        let d = ls.len();
        if d < 2 || rs.len() != d || ls[d - 1] != rs[d - 2] {
            return None;
        }
        let (m, k, n) = (ls[d - 2], ls[d - 1], rs[d - 1]);
        let mut out_shape = Vec::with_capacity(d);
        for i in 0..d - 2 {
            match (ls[i], rs[i]) {
                (a, b) if a == b || b == 1 => out_shape.push(a),
                (1, b) => out_shape.push(b),
                _ => return None,
            }
        }
        let batch: usize = out_shape.iter().product();
        out_shape.extend([m, n]);
        let mut a = Operand::from_view(k, n, rst[d - 2], rst[d - 1])?;
        a.batch_stride = batch_stride(&rs[..d - 2], &rst[..d - 2], &out_shape[..d - 2])?;
        let mut b = Operand::from_view(m, k, lst[d - 2], lst[d - 1])?;
        b.batch_stride = batch_stride(&ls[..d - 2], &lst[..d - 2], &out_shape[..d - 2])?;
        Some(Self {
            m,
            n,
            k,
            batch,
            a,
            b,
            out_shape,
        })
    }
}

/// The single stride that walks an operand's batch dims in the output's batch order:
/// 0 when the operand is broadcast, `None` when its batch dims cannot be flattened.
fn batch_stride(shape: &[usize], strides: &[usize], out: &[usize]) -> Option<usize> {
    if shape.iter().all(|&s| s == 1) {
        return Some(0);
    }
    if shape != out {
        return None; // partly broadcast: not expressible as one strided batch
    }
    let dims: Vec<usize> = (0..shape.len()).filter(|&i| shape[i] != 1).collect();
    let last = *dims.last()?;
    for pair in dims.windows(2) {
        if strides[pair[0]] != strides[pair[1]] * shape[pair[1]] {
            return None;
        }
    }
    Some(strides[last])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn row_major_view_is_an_untransposed_column_major_operand() {
        // [rows 4, cols 3] row-major with a padded row stride of 8.
        let op = Operand::from_view(4, 3, 8, 1).unwrap();
        assert_eq!((op.transposed, op.rows, op.cols, op.ld), (false, 3, 4, 8));
    }

    #[test]
    fn transposed_view_is_a_transposed_operand() {
        // The transpose of a contiguous [3, 4] matrix: shape [4, 3], strides [1, 4].
        let op = Operand::from_view(4, 3, 1, 4).unwrap();
        assert_eq!((op.transposed, op.rows, op.cols, op.ld), (true, 4, 3, 4));
    }

    #[test]
    fn strided_views_in_both_dims_are_refused() {
        assert!(Operand::from_view(4, 3, 6, 2).is_none());
    }

    #[test]
    fn linear_backward_products_read_transposed_operands_in_place() {
        // dX = dY · Wᵀ with dY [5, 7] contiguous and W [3, 7] stored, viewed as [7, 3].
        let p = Problem::new(&[5, 7], &[7, 1], &[7, 3], &[1, 7]).unwrap();
        assert_eq!((p.m, p.n, p.k, p.batch), (5, 3, 7, 1));
        assert_eq!(
            (p.a.transposed, p.a.rows, p.a.cols, p.a.ld),
            (true, 7, 3, 7)
        );
        assert_eq!(
            (p.b.transposed, p.b.rows, p.b.cols, p.b.ld),
            (false, 7, 5, 7)
        );
        // dW = Xᵀ · dY with X [5, 3] stored, viewed as [3, 5].
        let p = Problem::new(&[3, 5], &[1, 3], &[5, 7], &[7, 1]).unwrap();
        assert_eq!((p.m, p.n, p.k), (3, 7, 5));
        assert_eq!(
            (p.b.transposed, p.b.rows, p.b.cols, p.b.ld),
            (true, 3, 5, 3)
        );
        assert_eq!(p.out_shape, vec![3, 7]);
    }

    #[test]
    fn mismatched_inner_dims_are_refused() {
        assert!(Problem::new(&[5, 7], &[7, 1], &[6, 3], &[3, 1]).is_none());
    }

    #[test]
    fn batch_dims_flatten_or_broadcast() {
        assert_eq!(batch_stride(&[2, 3], &[36, 12], &[2, 3]), Some(12));
        assert_eq!(batch_stride(&[1, 1], &[12, 12], &[2, 3]), Some(0));
        assert_eq!(batch_stride(&[2, 1], &[12, 12], &[2, 3]), None);
        assert_eq!(batch_stride(&[2, 3], &[12, 24], &[2, 3]), None);
    }
}
