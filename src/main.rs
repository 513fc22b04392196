//! `pendo-segment`: see `cli` for the commands.

fn main() -> std::process::ExitCode {
    pendo_segment::cli::main()
}
