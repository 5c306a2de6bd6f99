#include "model/cpu/attention.h"
