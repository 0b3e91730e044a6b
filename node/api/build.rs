//! Compiles `tests/openai_python.rs` only when `BITORCH_OPENAI_PYTHON` names a Python that has
//! the `openai` package (see that test).

fn main() {
    println!("cargo::rustc-check-cfg=cfg(openai_python)");
    println!("cargo::rerun-if-env-changed=BITORCH_OPENAI_PYTHON");
    if std::env::var_os("BITORCH_OPENAI_PYTHON").is_some_and(|v| !v.is_empty()) {
        println!("cargo::rustc-cfg=openai_python");
    }
}
