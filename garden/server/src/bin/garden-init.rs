//! pid 1 of every gardend container; see `garden_server::init`.

fn main() {
    garden_server::init::main()
}
