mod run_record;
fn main() {
    let _ = run_record::metric_catalog();
}
