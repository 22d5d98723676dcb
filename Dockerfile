# CUDA PyTorch base image; the project's requirements are installed on top.
# Build:  docker build -t idiff-face .
# Run:    docker run --gpus all -v $PWD/weights:/workspace/weights -v $PWD/data:/workspace/data idiff-face
# The default command runs the test suite; pass any script instead, e.g.
#         docker run --gpus all ... idiff-face python main.py paths.data_root=/workspace/data
FROM pytorch/pytorch:2.5.1-cuda12.4-cudnn9-runtime

ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1
RUN apt-get update && apt-get install -y --no-install-recommends libgl1 libglib2.0-0 && rm -rf /var/lib/apt/lists/*
WORKDIR /workspace
COPY requirements.txt requirements-nodeps.txt ./
RUN pip install --no-cache-dir -r requirements.txt && pip install --no-cache-dir --no-deps -r requirements-nodeps.txt
COPY . .
CMD ["python", "-m", "pytest"]
