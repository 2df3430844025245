// `peft parity ...` (filled by the LoRA work)
#include "tools/cli.h"
