use pyo3::prelude::*;

#[pymodule]
fn _arrows(_m: &Bound<'_, PyModule>) -> PyResult<()> {
    Ok(())
}
