// filled by its issue
#include <doctest/doctest.h>
