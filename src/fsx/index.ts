// Placeholder: the native file-system calls Node lacks (see native/). Filled in by the fsx work.
export {};
