//! The filter without a gateway: `gateway check`, captures read and replayed through the real
//! kernel program (BPF_PROG_TEST_RUN), the SNI of captured ClientHellos, and frames built for
//! tests and benchmarks. Beside `control`: imports `observe`, `kernel`, `config` and the
//! leaves; only `cli`, the benchmarks and the tests import it.

pub mod capture;
pub mod check;
pub mod frames;
pub mod replay;
pub mod sni;
pub mod testrun;
