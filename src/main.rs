use mimalloc::MiMalloc;

#[global_allocator]
static GLOBAL: MiMalloc = MiMalloc;

fn main() -> std::process::ExitCode {
    ringlb::runtime::disable_huge_pages();
    ringlb::cli::main()
}
