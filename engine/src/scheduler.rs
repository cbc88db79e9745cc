//! Owned by a work item; see docs/ARCHITECTURE.
