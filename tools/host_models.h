// The three host models of the PEFT goldens (dummy, mlp, deep), rebuilt from
// nn modules (filled by the nn work).
#pragma once
