# CUDA PyTorch base image; the project's requirements are installed on top.
# Build:  docker build -t idiff-face .
# Run:    docker run --gpus all -v $PWD/weights:/workspace/weights -v $PWD/data:/workspace/data idiff-face
# The default command runs the CPU/GPU demo (python demo.py, report in outputs/demo/); pass any
# script instead, e.g.
#         docker run --gpus all ... idiff-face python main.py paths.data_root=/workspace/data
#         docker run --gpus all ... idiff-face torchrun --standalone --nproc_per_node=8 train_fr.py data.root=...
#         docker run idiff-face python -m pytest
FROM pytorch/pytorch:2.5.1-cuda12.4-cudnn9-runtime

ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1
RUN apt-get update && apt-get install -y --no-install-recommends libgl1 libglib2.0-0 && rm -rf /var/lib/apt/lists/*
WORKDIR /workspace
COPY requirements.txt ./
RUN pip install --no-cache-dir -r requirements.txt
COPY . .
# facenet-pytorch without its stale torch pin, and this project (-e .)
RUN pip install --no-cache-dir --no-deps -r requirements-nodeps.txt
CMD ["python", "demo.py"]
