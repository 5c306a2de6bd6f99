#include "model/decode/decoder.h"

#include "model/decode/kv_cache.h"
#include "model/llama.h"
#include "model/memory/rmt_decoder.h"
#include "model/memory/segment_decoder.h"

namespace rt {

std::unique_ptr<Decoder> make_decoder(LlamaModel& model, int capacity) {
  const auto& mem = model.config().memory;
  if (!mem) return std::make_unique<KvCacheDecoder>(model, capacity);
  if (mem->type == "rmt") return std::make_unique<RmtDecoder>(model);
  return std::make_unique<SegmentDecoder>(model, make_layer_memory(model));
}

}  // namespace rt
