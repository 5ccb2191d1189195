//! Writing a float matrix as a NumPy `.npy` file (format version 1.0), readable with
//! `numpy.load`.

use std::io::Write;

/// Writes `rows` (all of the same length) as a little-endian f32 array of shape
/// `[rows.len(), width]`.
///
/// # Errors
/// [`std::io::ErrorKind::InvalidInput`] for rows of unequal length; any write error.
pub fn write_npy_f32(mut out: impl Write, rows: &[Vec<f32>]) -> std::io::Result<()> {
    let width = rows.first().map_or(0, Vec::len);
    if rows.iter().any(|r| r.len() != width) {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            "rows of an .npy matrix must have equal lengths",
        ));
    }
    let mut header = format!(
        "{{'descr': '<f4', 'fortran_order': False, 'shape': ({}, {width}), }}",
        rows.len()
    );
    // Magic (6) + version (2) + header length (2) + header + '\n', padded to 64 bytes.
    let unpadded = 10 + header.len() + 1;
    header.push_str(&" ".repeat(unpadded.next_multiple_of(64) - unpadded));
    header.push('\n');
    out.write_all(b"\x93NUMPY\x01\x00")?;
    out.write_all(&(header.len() as u16).to_le_bytes())?;
    out.write_all(header.as_bytes())?;
    for row in rows {
        for value in row {
            out.write_all(&value.to_le_bytes())?;
        }
    }
    out.flush()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_is_aligned_and_data_follows() {
        let mut bytes = Vec::new();
        write_npy_f32(&mut bytes, &[vec![1.0, 2.0], vec![3.0, 4.5]]).unwrap();
        let header_len = u16::from_le_bytes([bytes[8], bytes[9]]) as usize;
        assert_eq!((10 + header_len) % 64, 0);
        let header = std::str::from_utf8(&bytes[10..10 + header_len]).unwrap();
        assert!(header.contains("'shape': (2, 2)"), "{header}");
        let data: Vec<f32> = bytes[10 + header_len..]
            .chunks_exact(4)
            .map(|b| f32::from_le_bytes(b.try_into().unwrap()))
            .collect();
        assert_eq!(data, vec![1.0, 2.0, 3.0, 4.5]);
        assert!(write_npy_f32(Vec::new(), &[vec![1.0], vec![]]).is_err());
    }
}
