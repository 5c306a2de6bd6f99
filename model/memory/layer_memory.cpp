#include "model/memory/layer_memory.h"

#include "common/errors.h"
#include "model/llama.h"

namespace rt {

std::unique_ptr<LayerMemory> make_knn_memory(LlamaModel& model);
std::unique_ptr<LayerMemory> make_compressive_memory(LlamaModel& model);

std::unique_ptr<LayerMemory> make_layer_memory(LlamaModel& model) {
  const auto& mem = model.config().memory;
  if (!mem || mem->type == "rmt") return nullptr;
  if (mem->type == "knn") return make_knn_memory(model);
  if (mem->type == "compressive") return make_compressive_memory(model);
  throw UsageError("model.memory.type: unknown memory type '" + mem->type + "'");
}

}  // namespace rt
