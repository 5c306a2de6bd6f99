#include "model/backend.h"
