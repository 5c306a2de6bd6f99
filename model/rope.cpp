#include "model/rope.h"
