//! `pendo-segment`: see `cli` for the commands.

/// Small per-event allocations dominate the transformer's and sinks' allocator use; mimalloc
/// serves them with thread-local free lists instead of glibc's arenas.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> std::process::ExitCode {
    pendo_segment::cli::main()
}
