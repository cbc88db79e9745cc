//! Workload specs (TOML) and suites. Owned by the workloads work item.
