#include <mimo/error.hpp>
int main() { return 0; }
