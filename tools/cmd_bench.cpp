// `peft bench ...` (filled by the benchmark work)
#include "tools/cli.h"
