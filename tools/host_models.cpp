#include "tools/host_models.h"
