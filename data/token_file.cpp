#include "data/token_file.h"
